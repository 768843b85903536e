"""YAML as tether reads it: safe loading, and a key written twice in one mapping is an error (PyYAML would keep the
last one silently, so a pasted-over section could pass unnoticed)."""

from __future__ import annotations

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # an unhashable key: SafeLoader's own error
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text):
    """`yaml.safe_load`, refusing duplicate keys (a `yaml.YAMLError` whose first line names the key and line)."""
    return yaml.load(text, Loader=UniqueKeyLoader)
