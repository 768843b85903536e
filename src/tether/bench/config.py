"""The bench configuration: one YAML file describing the reference, the probe, the attacks and the methods.

    model: smollm2-135m-instruct        # the un-aligned starting model
    data_dir: null                      # named datasets (default $TETHER_DATA_DIR, else ../shared/data)
    seeds: [0]
    reference:                          # stage 1: safety-align the model (LoRA SFT, merged); or `model: PATH`
      data: {advbench-refusals: 96, safety-llamas: 96, alpaca: 128}   # source: rows, seeded sample
      train: {learning_rate: 2.0e-4, num_train_epochs: 1}            # any `tether train` field (checked at load)
    probe: {harmful: [advbench], benign: [alpaca], layers: [9, 10, 11], pooling: mean}
    train: {learning_rate: 2.0e-4, ...}  # shared by every attack run
    scenarios:                           # attacks
      - {name: pure-bad, harmful: pure-bad, n_harmful: 100, train: {num_train_epochs: 3}}
      - {name: gsm8k-hr0.05, benign: gsm8k, n_benign: 200, harmful: pure-bad, harmful_ratio: 0.05,
         family: gsm8k, x: harmful_ratio}
    methods:
      - {name: SFT, train: {regularizer: none}}
      - {name: A-Reg probe, train: {regularizer: adaptive, critic: probe}}   # probe_path is filled in
      - {name: SFT + Antidote, antidote: {method: SFT, data: [advbench-targets], limit: 128, ratio: 0.1}}
      - {name: SFT + Safe LoRA, safe_lora: {method: SFT, num_layers: 10}}   # against the bench's `model`
      - {name: C-SFT β 0.5, train: {regularizer: fixed, beta: 0.5}, dial: C-SFT}   # one curve with the same dial
    eval: {benchmarks: [harmbench:~50, xstest:~50], utility: gsm8k-test:100, max_new_tokens: 48}

`base: demo` (or `base: other.yaml`) starts from another config; this file's top-level keys replace the base's.
Unknown keys are errors that name the key and the file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from tether.errors import TetherInputError
from tether.yaml_files import load_yaml

DEMO_CONFIG = resources.files("tether.bench") / "demo.yaml"  # the embedded config of `tether demo`, `base: demo`


@dataclass
class ReferenceSpec:
    model: str | None = None  # an already safety-aligned model: skips the alignment stage
    data: dict[str, int] = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    eval_base: bool = True  # also evaluate the un-aligned model (the "before alignment" row)


@dataclass
class ProbeSpec:
    harmful: list[str] = field(default_factory=lambda: ["advbench", "safety-llamas:600"])
    benign: list[str] = field(default_factory=lambda: ["alpaca", "gsm8k:600"])
    layers: list[int] = field(default_factory=lambda: [11])
    pooling: str = "last-layer"
    tokens: str = "last"  # `tether probe fit --tokens`
    C: float | None = None
    eval_harmful: list[str] = field(default_factory=list)  # held-out sets measured on the reference
    eval_benign: list[str] = field(default_factory=list)
    val_harmful: list[str] = field(default_factory=list)  # with val_benign: the layer among `layers` is chosen on these
    val_benign: list[str] = field(default_factory=list)
    val_max_flagged: dict[str, float] = field(default_factory=dict)  # {validation benign set: most share flagged}


@dataclass
class Scenario:
    name: str
    harmful: str = "pure-bad"
    n_harmful: int | None = None  # pure attack: this many harmful rows (all of them when None)
    benign: str | None = None  # mixed attack: the benign task
    n_benign: int | None = None
    harmful_ratio: float = 0.0
    methods: list[str] | None = None  # default: every method
    train: dict = field(default_factory=dict)
    utility: str | None = None  # held-out NLL data (default: eval.utility)
    family: str | None = None  # plot grouping
    x: str | None = None  # plotted against: harmful_ratio or learning_rate
    anchor: str | None = None  # safety anchors: `n_anchor` rows of this chat dataset (harmful prompt, refusal), risk 1
    n_anchor: int = 0


@dataclass
class AntidoteSpec:
    """Prune the runs of `method` after training (`tether antidote`) instead of training anything new."""

    method: str  # the trained method whose runs are pruned, e.g. SFT
    data: list[str] = field(default_factory=lambda: ["advbench-targets"])  # harmful chat rows (prompt + response)
    limit: int | None = 128
    ratio: float = 0.1  # share of each adapter weight matrix set to zero


@dataclass
class SafeLoraSpec:
    """Project the LoRA runs of `method` after training (`tether safelora`, the un-aligned model being the bench's
    `model`, which the reference was aligned from) instead of training anything new."""

    method: str  # the trained method whose runs are projected, e.g. SFT
    num_layers: int | None = 10  # project the N least aligned layers (the official default)
    threshold: float | None = None  # or every layer whose cosine with its projection is at most this


@dataclass
class Method:
    name: str
    train: dict = field(default_factory=dict)
    antidote: AntidoteSpec | None = None
    safe_lora: SafeLoraSpec | None = None
    dial: str | None = None  # methods sharing a dial (one setting swept) are one curve on the ASR-utility plot

    @property
    def post_hoc(self) -> AntidoteSpec | SafeLoraSpec | None:
        """The repair this method applies to another method's runs after training (Antidote, Safe LoRA), if any."""
        return self.antidote or self.safe_lora


@dataclass
class EvalSpec:
    benchmarks: list[str] = field(default_factory=lambda: ["harmbench:~50", "xstest:~50"])
    utility: str | None = "gsm8k-test"
    utility_limit: int = 100
    extra_benchmarks: list[str] = field(default_factory=list)  # e.g. gsm8k-test:~50 (exact match), on attack runs only
    max_new_tokens: int = 48
    batch_size: int = 16


@dataclass
class BenchConfig:
    model: str = "smollm2-135m-instruct"
    out_dir: str = "runs/bench"
    data_dir: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    reference: ReferenceSpec = field(default_factory=ReferenceSpec)
    probe: ProbeSpec | None = field(default_factory=ProbeSpec)
    train: dict = field(default_factory=dict)
    scenarios: list[Scenario] = field(default_factory=list)
    methods: list[Method] = field(default_factory=list)
    eval: EvalSpec = field(default_factory=EvalSpec)

    def trained(self, method: Method) -> Method:
        """The method whose training run `method` evaluates: itself, or for a post-hoc method (Antidote, Safe LoRA)
        the one whose runs it repairs."""
        spec = method.post_hoc
        return method if spec is None else next(m for m in self.methods if m.name == spec.method)

    def own_utility(self, scenario: Scenario) -> str | None:
        """The scenario's held-out NLL data when it is not the evaluation's default (the reference is then measured
        on it too, `reference_utility_key`); None otherwise."""
        return scenario.utility if scenario.utility not in (None, self.eval.utility) else None

    def runs(self) -> list[tuple[Scenario, Method, int]]:
        """Every (scenario, method, seed) of the matrix, in order."""
        by_name = {m.name: m for m in self.methods}
        return [
            (scenario, by_name[name], seed)
            for scenario in self.scenarios
            for name in (scenario.methods or list(by_name))
            for seed in self.seeds
        ]


def load_bench_config(path: str | Path) -> BenchConfig:
    path = Path(path)
    if not path.is_file():
        raise TetherInputError(f"bench config not found: {path}; pass an existing YAML file")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise TetherInputError(f"{path}: malformed YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise TetherInputError(f"{path}: expected a mapping of bench settings")
    if "base" in raw:  # `base: demo` (the embedded demo config) or a path relative to this file
        base = raw.pop("base")
        if base == "demo":
            base_raw = load_yaml(DEMO_CONFIG.read_text())
        else:
            base_path = path.parent / base
            if not base_path.is_file():
                raise TetherInputError(f"{path}: base config {base_path} not found; fix `base:`")
            base_raw = load_yaml(base_path.read_text())
        raw = {**base_raw, **raw}  # top-level keys of this file replace the base's
    return bench_config_from_dict(raw, str(path))


def bench_config_from_dict(raw: dict, where: str = "bench config") -> BenchConfig:
    config = _build(BenchConfig, raw, where)
    config.reference = _build(ReferenceSpec, raw.get("reference") or {}, f"{where}: reference")
    config.probe = (
        None if raw.get("probe", {}) is None else _build(ProbeSpec, raw.get("probe") or {}, f"{where}: probe")
    )
    config.eval = _build(EvalSpec, raw.get("eval") or {}, f"{where}: eval")
    config.scenarios = [_build(Scenario, s, f"{where}: scenario") for s in raw.get("scenarios") or []]
    config.methods = [_build(Method, m, f"{where}: method") for m in raw.get("methods") or []]
    for method in config.methods:
        if method.antidote is not None:
            method.antidote = _build(AntidoteSpec, method.antidote, f"{where}: method {method.name!r}: antidote")
            if isinstance(method.antidote.data, str):  # `data: advbench-targets`, one source
                method.antidote.data = [method.antidote.data]
        if method.safe_lora is not None:
            method.safe_lora = _build(SafeLoraSpec, method.safe_lora, f"{where}: method {method.name!r}: safe_lora")
    _validate(config, where)
    _check_train_fields(config, where)
    return config


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise TetherInputError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise TetherInputError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(names))}")
    return cls(**raw)


def _number(where: str, name: str, value, least: float, most: float | None = None, below: bool = False) -> None:
    """`value` is a number >= `least` (and <= `most`, or < `most` with `below`), else an error naming the key."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= least
    if ok and most is not None:
        ok = value < most if below else value <= most
    if not ok:
        bound = f"at least {least}" if most is None else f"in [{least}, {most}{')' if below else ']'}"
        raise TetherInputError(f"{where}: {name} must be a number {bound}, got {value!r}")


def _check_numbers(config: BenchConfig, where: str) -> None:
    """The counts, ratios and lengths of the config are in range: a typo fails at load, not hours into the bench."""
    if not isinstance(config.seeds, list) or not config.seeds:
        raise TetherInputError(f"{where}: seeds must be a non-empty list of integers, e.g. [0]")
    for seed in config.seeds:
        _number(where, "each seed", seed, 0)
    for source, n in (config.reference.data or {}).items():
        _number(f"{where}: reference", f"data: {source}", n, 1)
    for scenario in config.scenarios:
        at = f"{where}: scenario {scenario.name!r}"
        for name in ("n_harmful", "n_benign"):
            if getattr(scenario, name) is not None:
                _number(at, name, getattr(scenario, name), 1)
        _number(at, "harmful_ratio", scenario.harmful_ratio, 0.0, 1.0, below=True)
        _number(at, "n_anchor", scenario.n_anchor, 0)
    for method in config.methods:
        if method.antidote is not None:
            at = f"{where}: method {method.name!r}: antidote"
            if method.antidote.limit is not None:
                _number(at, "limit", method.antidote.limit, 1)
            if not method.antidote.data:
                raise TetherInputError(f"{at}: data is empty; name harmful chat data, e.g. advbench-targets")
    for name in ("utility_limit", "max_new_tokens", "batch_size"):
        _number(f"{where}: eval", name, getattr(config.eval, name), 1)
    probe = config.probe
    if probe is not None:
        from tether.critics.probe import POOLINGS

        if not isinstance(probe.layers, list) or not probe.layers:
            raise TetherInputError(f"{where}: probe: layers must be a non-empty list of hidden-state indices")
        for layer in probe.layers:
            _number(f"{where}: probe", "each layer", layer, 0)
        if probe.pooling not in POOLINGS:
            raise TetherInputError(
                f"{where}: probe: pooling must be one of {', '.join(POOLINGS)}; got {probe.pooling!r}"
            )
        if probe.C is not None and not (isinstance(probe.C, (int, float)) and probe.C > 0):
            raise TetherInputError(f"{where}: probe: C must be a positive number, got {probe.C!r}")


def _validate(config: BenchConfig, where: str) -> None:
    if not config.scenarios or not config.methods:
        raise TetherInputError(f"{where}: needs at least one scenario and one method")
    _check_numbers(config, where)
    for kind, items in (("scenario", config.scenarios), ("method", config.methods)):
        names = [item.name for item in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise TetherInputError(f"{where}: {kind} name {duplicates[0]!r} is used twice; names must be unique")
    known = {m.name for m in config.methods}
    for method in config.methods:
        if method.dial is not None and not (isinstance(method.dial, str) and method.dial.strip()):
            raise TetherInputError(
                f"{where}: method {method.name!r}: dial must be a name (the methods sharing it form one curve), got "
                f"{method.dial!r}"
            )
        spec = method.post_hoc
        if spec is None:
            continue
        kind = "antidote" if method.antidote is not None else "safe_lora"
        if method.antidote is not None and method.safe_lora is not None:
            raise TetherInputError(f"{where}: method {method.name!r} sets antidote and safe_lora; keep one")
        if method.train:
            raise TetherInputError(f"{where}: method {method.name!r} repairs {spec.method!r}'s runs; drop its `train`")
        trained = next((m for m in config.methods if m.name == spec.method), None)
        if trained is None or trained.post_hoc is not None:
            raise TetherInputError(
                f"{where}: method {method.name!r}: {kind}.method must name a trained method defined under methods"
            )
        if method.antidote is not None and not 0.0 <= spec.ratio <= 1.0:
            raise TetherInputError(f"{where}: method {method.name!r}: antidote.ratio must be in [0, 1]")
        if method.safe_lora is not None:
            if (spec.num_layers is None) == (spec.threshold is None):
                raise TetherInputError(
                    f"{where}: method {method.name!r}: safe_lora needs one of num_layers and threshold (set the other "
                    "null)"
                )
            if spec.num_layers is not None:
                _number(f"{where}: method {method.name!r}: safe_lora", "num_layers", spec.num_layers, 1)
            else:
                _number(f"{where}: method {method.name!r}: safe_lora", "threshold", spec.threshold, -1.0, 1.0)
            if config.reference.model is not None:
                raise TetherInputError(
                    f"{where}: method {method.name!r}: Safe LoRA reads the alignment as the reference minus the "
                    "bench's model, but reference.model names a reference aligned elsewhere; drop one"
                )
        settings = {**config.train, **trained.train} if isinstance(trained.train, dict) else {}
        if method.safe_lora is not None and not settings.get("use_peft", True):
            raise TetherInputError(f"{where}: method {method.name!r}: Safe LoRA projects a LoRA run; train with LoRA")
    for scenario in config.scenarios:
        unknown = [m for m in scenario.methods or [] if m not in known]
        if unknown:
            raise TetherInputError(
                f"{where}: scenario {scenario.name!r} names method {unknown[0]!r}; define it under methods"
            )
        if scenario.benign is None and scenario.harmful_ratio:
            raise TetherInputError(f"{where}: scenario {scenario.name!r} has harmful_ratio but no benign dataset")
        if (scenario.anchor is None) != (scenario.n_anchor == 0):
            raise TetherInputError(f"{where}: scenario {scenario.name!r}: anchor and n_anchor go together; set both")
        if scenario.x not in (None, "harmful_ratio", "learning_rate"):
            raise TetherInputError(f"{where}: scenario {scenario.name!r}: x must be harmful_ratio or learning_rate")
    probe = config.probe
    from tether.critics.probe import TOKEN_POOLINGS

    if probe is not None and probe.tokens not in TOKEN_POOLINGS:
        choices = ", ".join(TOKEN_POOLINGS)
        raise TetherInputError(f"{where}: probe: tokens must be one of {choices}; got {probe.tokens!r}")
    if probe is not None and bool(probe.val_harmful) != bool(probe.val_benign):
        raise TetherInputError(f"{where}: probe: val_harmful and val_benign choose the layer together; set both")
    if probe is not None and probe.val_max_flagged and not probe.val_harmful:
        raise TetherInputError(f"{where}: probe: val_max_flagged constrains the layer selection; set val_harmful too")
    if probe is not None and probe.val_harmful and probe.pooling != "last-layer":
        raise TetherInputError(f"{where}: probe: choosing the layer (val_harmful) needs pooling: last-layer")
    if config.reference.model is None and not config.reference.data:
        raise TetherInputError(f"{where}: reference needs `data` (sources to align on) or `model` (an aligned model)")


def _check_train_fields(config: BenchConfig, where: str) -> None:
    """Every `train:` mapping names only fields `tether train` accepts (those the bench fills in itself, such as
    `model_name_or_path`, `dataset`, `seed` or `probe_path`, among them): a misspelt field fails when the config
    loads, not when its stage starts hours later."""
    from tether.cli.train import make_parser

    parser = make_parser()
    entries = [("train", config.train), ("reference: train", config.reference.train)]
    entries += [(f"scenario {s.name!r}: train", s.train) for s in config.scenarios]
    entries += [(f"method {m.name!r}: train", m.train) for m in config.methods]
    for entry, mapping in entries:
        if not isinstance(mapping, dict):
            raise TetherInputError(f"{where}: {entry}: expected a mapping of `tether train` fields")
        parser.check_fields(mapping, f"{where}: {entry}")


def slug(name: str) -> str:
    """A method or scenario name as a folder name: `A-Reg probe` -> `a-reg-probe`."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def reference_utility_key(utility: str) -> str:
    """The evaluation key of the reference's held-out NLL on a scenario's own utility data."""
    return f"reference__utility-{slug(utility)}"
