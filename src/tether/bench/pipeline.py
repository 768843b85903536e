"""`tether bench` stages. Each writes one folder under the bench directory, atomically; a rerun skips finished ones.

<out>/data/reference.jsonl, data/<scenario>-seed<k>.jsonl    training data, as built (risk labels included)
<out>/reference/run/            stage 1: the alignment run (LoRA)      reference/model/: merged weights
<out>/configs/<stage>.yaml      each training run's settings, a record (rerun one with `tether train --config`)
<out>/probe/                    stage 2: the probe, fit on the reference; probe_eval/eval.json: held-out AUROC
<out>/runs/<scenario>/<method>/seed<k>/        stage 3-4: one `tether train` run directory each
<out>/antidote/<scenario>/<method>/seed<k>/    an Antidote method's pruned model (of its trained method's run)
<out>/safe_lora/<scenario>/<method>/seed<k>/   a Safe LoRA method's projected model (of its trained method's run)
<out>/evals/<base|reference|scenario__method__seed<k>>/results.json     stage 5: `tether eval` results
<out>/report/                   stage 6: report.md, results.json, plots (see `tether.bench.report`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

import yaml

from tether.baselines import settings_use_critic
from tether.baselines.antidote import antidote_to_dir
from tether.baselines.safe_lora import safe_lora_to_dir
from tether.bench.config import BenchConfig, Method, Scenario, reference_utility_key, slug
from tether.critics.probe_tasks import evaluate_probe_dir, fit_probe_dir
from tether.errors import TetherInputError
from tether.evaluation.run import evaluate_to_dir
from tether.run_files import atomic_dir, run_lock, staging_path, write_text_atomic
from tether.runner import train_from_settings
from tether.trainer import TetherConfig

STAGE_TIMES = "stage_times.json"  # stage -> wall-clock seconds when it was computed


def log(message: str) -> None:
    print(f"[tether bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, config: BenchConfig, out_dir: str | Path | None = None):
        self.config = config
        self.out = Path(out_dir or config.out_dir)

    # ---- paths
    @property
    def reference_model(self) -> str:
        return self.config.reference.model or str(self.out / "reference" / "model")

    @property
    def probe_dir(self) -> Path:
        return self.out / "probe"

    def run_dir(self, scenario: Scenario, method: Method, seed: int) -> Path:
        return self.out / "runs" / slug(scenario.name) / slug(method.name) / f"seed{seed}"

    def eval_dir(self, key: str) -> Path:
        return self.out / "evals" / key

    @staticmethod
    def run_key(scenario: Scenario, method: Method, seed: int) -> str:
        return f"{slug(scenario.name)}__{slug(method.name)}__seed{seed}"

    # ---- the whole matrix
    def run(self, scenarios: list[str] | None = None, methods: list[str] | None = None) -> Path:
        """Every stage that has no result yet; returns the report. One process at a time: the bench directory is
        locked (`<out>.lock`) for the whole run, before anything is written."""
        with run_lock(self.out, option="--out_dir"):
            return self.run_stages(scenarios, methods)

    def run_stages(self, scenarios: list[str] | None = None, methods: list[str] | None = None) -> Path:
        self.check_selection(scenarios, methods)
        check_canaries(self.config)
        self.out.mkdir(parents=True, exist_ok=True)
        self.write_bench_yaml()
        started = time.time()
        if self.config.reference.eval_base:
            self.evaluate("base", self.config.model)
        self.align_reference()
        self.evaluate("reference", self.reference_model)
        matrix = [
            (s, m, seed)
            for s, m, seed in self.config.runs()
            if (not scenarios or s.name in scenarios) and (not methods or m.name in methods)
        ]
        if any(self.uses_probe(s, self.config.trained(m)) for s, m, _ in matrix):
            self.fit_probe()
        for utility in sorted({self.config.own_utility(s) for s, _, _ in matrix} - {None}):
            self.evaluate(reference_utility_key(utility), self.reference_model, utility, nll_only=True)
        for i, (scenario, method, seed) in enumerate(matrix, start=1):
            log(f"run {i}/{len(matrix)}: {scenario.name} / {method.name} / seed {seed}")
            run_dir = self.train(scenario, self.config.trained(method), seed)
            model = run_dir if method.post_hoc is None else self.repair(scenario, method, seed, run_dir)
            extra = self.config.eval.extra_benchmarks
            self.evaluate(self.run_key(scenario, method, seed), str(model), scenario.utility, extra)
        from tether.bench.report import write_report

        report = write_report(self.out)
        log(f"done in {time.time() - started:.0f} s; report: {report}")
        return report

    def write_bench_yaml(self) -> None:
        """`bench.yaml`: this config, plus the scenarios, methods and seeds of earlier configs run into the same
        directory (by name; this config's win), so that the report covers every run on disk."""
        mine = _as_dict(self.config)
        for scenario in mine["scenarios"]:  # spell out "every method" before mixing in other configs' methods
            scenario["methods"] = scenario["methods"] or [m["name"] for m in mine["methods"]]
        path = self.out / "bench.yaml"
        if path.is_file():
            earlier = yaml.safe_load(path.read_text()) or {}
            mine["seeds"] = sorted(set(earlier.get("seeds") or []) | set(mine["seeds"]))
            names = {m["name"] for m in mine["methods"]}
            mine["methods"] = [m for m in earlier.get("methods", []) if m["name"] not in names] + mine["methods"]
            by_name = {s["name"]: s for s in mine["scenarios"]}
            for old in earlier.get("scenarios", []):
                if old["name"] in by_name:  # the same scenario run with other methods: keep both lists
                    methods = by_name[old["name"]]["methods"]
                    methods[:0] = [m for m in old["methods"] or [] if m not in methods]
            mine["scenarios"] = [s for s in earlier.get("scenarios", []) if s["name"] not in by_name] + mine[
                "scenarios"
            ]
        path.write_text(yaml.safe_dump(mine, sort_keys=False))

    def check_selection(self, scenarios, methods) -> None:
        for kind, chosen, known in (
            ("scenario", scenarios, [s.name for s in self.config.scenarios]),
            ("method", methods, [m.name for m in self.config.methods]),
        ):
            unknown = [c for c in chosen or [] if c not in known]
            if unknown:
                raise TetherInputError(f"unknown {kind} {unknown[0]!r}; the config defines {', '.join(known)}")

    # ---- stage 1: the safe reference
    def align_reference(self) -> None:
        if self.config.reference.model is not None:
            log(f"reference: {self.config.reference.model} (given)")
            return
        final = self.out / "reference" / "model"
        spec = {"model": self.config.model, "reference": _as_dict(self.config.reference), "train": self.config.train}
        if self.cached("reference", final / "config.json", spec):
            log(f"reference: cached at {final}")
            return
        data = self.write_data("reference", reference_rows(self.config.reference.data, self.config.data_dir, 0))
        run_dir = self.out / "reference" / "run"
        settings = {
            **self.config.train,
            **self.config.reference.train,
            "model_name_or_path": self.config.model,
            "dataset": str(data),
            "regularizer": "none",
        }
        self.train_once("reference alignment", run_dir, settings)
        log("reference: merging the adapter into the weights")
        started = time.monotonic()  # the training is its own stage (reference__run)
        merge_run(run_dir, final)
        self.record("reference", spec, started)

    # ---- stage 2: the probe, fit when a run's critic is the probe
    def uses_probe(self, scenario: Scenario, method: Method) -> bool:
        settings = {**self.config.train, **scenario.train, **method.train}
        return settings_use_critic(settings) and settings.get("critic", TetherConfig.critic) == "probe"

    def fit_probe(self) -> None:
        spec = self.config.probe
        if spec is None:
            return
        unset = {"val_harmful": [], "val_benign": [], "val_max_flagged": {}, "tokens": "last"}
        # fields left at these values are left out of the record, so records written before they existed stay valid
        fields = {k: v for k, v in _as_dict(spec).items() if k not in unset or v != unset[k]}
        probe_spec = {"probe": fields, "model": self.reference_model}
        if not self.cached("probe", self.probe_dir / "probe.json", probe_spec):
            shutil.rmtree(self.probe_dir, ignore_errors=True)
            shutil.rmtree(self.out / "probe_eval", ignore_errors=True)
            log(f"probe: fitting on {self.reference_model}")
            started = time.monotonic()
            fit_probe_dir(
                self.reference_model,
                spec.harmful,
                spec.benign,
                spec.layers,
                spec.pooling,
                self.probe_dir,
                val_harmful=spec.val_harmful or None,  # set together with val_benign (checked at load)
                val_benign=spec.val_benign or None,
                val_max_flagged={name: float(share) for name, share in spec.val_max_flagged.items()} or None,
                C=None if spec.C is None else float(spec.C),
                tokens=spec.tokens,
                data_dir=self.config.data_dir,
            )
            self.record("probe", probe_spec, started)
        else:
            log(f"probe: cached at {self.probe_dir}")
        if spec.eval_harmful and spec.eval_benign and not (self.out / "probe_eval" / "eval.json").is_file():
            with atomic_dir(self.out / "probe_eval", replace=True) as staging:
                evaluate_probe_dir(
                    self.probe_dir, spec.eval_harmful, spec.eval_benign, out=staging, data_dir=self.config.data_dir
                )

    # ---- stages 3-4: attacks × methods
    def train(self, scenario: Scenario, method: Method, seed: int) -> Path:
        run_dir = self.run_dir(scenario, method, seed)
        rows = scenario_rows(scenario, self.config.data_dir, seed)
        data = self.write_data(f"{slug(scenario.name)}-seed{seed}", rows)
        settings = {
            **self.config.train,
            **scenario.train,
            **method.train,
            "model_name_or_path": self.reference_model,
            "dataset": str(data),
            "seed": seed,
        }
        if self.uses_probe(scenario, method):
            settings.setdefault("probe_path", str(self.probe_dir))
        self.train_once(f"{scenario.name} / {method.name}", run_dir, settings)
        return run_dir

    def train_once(self, what: str, run_dir: Path, settings: dict) -> None:
        stage = run_dir.relative_to(self.out).as_posix().replace("/", "__")
        data = Path(settings["dataset"])
        spec = {**settings, "dataset_sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
        if self.cached(stage, run_dir / "config.yaml", spec):
            check_tether_defaults(run_dir, settings)
            log(f"{what}: cached at {run_dir}")
            return
        train_settings = {"report_to": "none", "save_strategy": "no", **settings, "output_dir": str(run_dir)}
        if self.config.data_dir:
            train_settings["data_dir"] = self.config.data_dir
        # a record of the run's settings, to rerun it with `tether train --config`; training reads the dict itself
        config_file = self.out / "configs" / f"{stage}.yaml"
        record = yaml.safe_dump(train_settings, sort_keys=False)
        killed = staging_path(run_dir).exists()
        if killed and (not config_file.is_file() or config_file.read_text() != record):
            train_settings["restart"] = True  # a killed run of other settings; one of these settings resumes
        write_text_atomic(config_file, record)
        log(f"{what}: training ({config_file})")
        started = time.monotonic()
        print(f"run directory: {train_from_settings(train_settings)}")  # as `tether train` prints it
        self.record(stage, spec, started)

    def repair(self, scenario: Scenario, method: Method, seed: int, run_dir: Path) -> Path:
        """A post-hoc method: the trained run pruned by `tether antidote` or projected by `tether safelora` (a plain
        model directory)."""
        kind = "antidote" if method.antidote is not None else "safe_lora"
        spec = method.post_hoc
        final = self.out / kind / slug(scenario.name) / slug(method.name) / f"seed{seed}"
        record = {"run": str(run_dir), kind: dataclasses.asdict(spec)}
        if kind == "safe_lora":
            record["unaligned"] = self.config.model  # what the reference was aligned from
        stage = self.run_key(scenario, method, seed)
        if self.cached(f"{kind}__{stage}", final / f"{kind}.json", record):
            log(f"{scenario.name} / {method.name}: cached at {final}")
            return final
        shutil.rmtree(final, ignore_errors=True)  # a folder without its record file: left by a killed run
        started = time.monotonic()
        if kind == "antidote":
            log(f"{scenario.name} / {method.name}: pruning {run_dir} ({spec.ratio:.0%} of each adapter matrix)")
            antidote_to_dir(
                str(run_dir),
                list(spec.data),
                final,
                ratio=float(spec.ratio),
                limit=spec.limit,
                data_dir=self.config.data_dir,
            )
        else:
            log(f"{scenario.name} / {method.name}: projecting {run_dir} onto the alignment directions (Safe LoRA)")
            safe_lora_to_dir(
                str(run_dir), self.config.model, final, num_layers=spec.num_layers, threshold=spec.threshold
            )
        self.record(f"{kind}__{stage}", record, started)
        return final

    # ---- stage 5: evaluation
    def evaluate(
        self,
        key: str,
        model: str,
        utility: str | None = None,
        extra: list[str] | None = None,
        nll_only: bool = False,
    ) -> Path:
        """`tether eval` of `model`: the benchmarks and the held-out NLL on `utility` (default: eval.utility);
        `nll_only` measures the NLL alone (the reference on a scenario's own utility data)."""
        final = self.eval_dir(key)
        spec = self.config.eval
        record = {"model": model, "eval": _as_dict(spec), "utility": utility, "extra": extra or []}
        record |= {"nll_only": True} if nll_only else {}
        if self.cached(f"eval__{key}", final / "results.json", record):
            log(f"eval {key}: cached")
            return final
        benchmarks = [] if nll_only else spec.benchmarks + (extra or [])
        nll_data = utility or spec.utility
        log(f"eval {key}: {' '.join(benchmarks) if benchmarks else f'held-out NLL on {nll_data}'}")
        nll = {"nll_data": nll_data, "nll_limit": spec.utility_limit} if nll_data else {}
        shutil.rmtree(final, ignore_errors=True)  # a folder without results.json: left by a killed run
        started = time.monotonic()
        evaluate_to_dir(
            model,
            benchmarks,
            final,
            data_dir=self.config.data_dir,
            max_new_tokens=spec.max_new_tokens,
            batch_size=spec.batch_size,
            **nll,
        )
        self.record(f"eval__{key}", record, started)
        return final

    # ---- helpers
    def cached(self, stage: str, output: Path, spec: dict) -> bool:
        """Whether the stage's output exists and was made from this spec. An output made from another spec is an
        error rather than a silent reuse: the bench directory would mix two experiments."""
        if not output.is_file():
            return False
        record = self.out / "specs" / f"{stage}.json"
        if record.is_file() and json.loads(record.read_text()) != self.portable(spec):
            raise TetherInputError(
                f"{output.parent} was made with other settings than the config now asks for (stage {stage}); "
                "pass another --out_dir, or delete that folder to redo it"
            )
        return True

    def record(self, stage: str, spec: dict, started: float) -> None:
        """The stage's spec (what `cached` compares) and its wall-clock seconds since `started` (time.monotonic), in
        `stage_times.json` in the order the stages were computed (the report's stage table)."""
        path = self.out / "specs" / f"{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.portable(spec), indent=1, sort_keys=True))
        times_file = self.out / STAGE_TIMES
        times = json.loads(times_file.read_text()) if times_file.is_file() else {}
        times.pop(stage, None)  # a recomputed stage moves to the end
        times[stage] = round(time.monotonic() - started, 2)
        write_text_atomic(times_file, json.dumps(times, indent=1) + "\n")

    def portable(self, spec: dict) -> dict:
        """The spec with the bench directory's own path replaced, so that a moved bench directory stays valid."""
        return json.loads(json.dumps(spec).replace(json.dumps(str(self.out))[1:-1], "<out>"))

    def write_data(self, name: str, rows: list[dict]) -> Path:
        path = self.out / "data" / f"{name}.jsonl"
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
        return path


def check_canaries(config: BenchConfig) -> None:
    """Refuse a `canary_prompts` set (drift control) that shares a prompt with an evaluation benchmark: the controller
    would be trained to hold exactly what is then measured."""
    from tether.trainer.tether_config import resolved_canary_prompts

    canaries = {
        canary
        for scenario in config.scenarios
        for method in config.methods
        if (canary := resolved_canary_prompts({**config.train, **scenario.train, **config.trained(method).train}))
    }
    if not canaries:
        return
    from tether.data.prompts import load_prompts
    from tether.evaluation.benchmarks import load_benchmark

    benchmarks = [*config.eval.benchmarks, *config.eval.extra_benchmarks]
    evaluated = {spec: {p[-1]["content"] for p in load_benchmark(spec, config.data_dir).prompts} for spec in benchmarks}
    for canary in sorted(canaries):
        texts = {p[-1]["content"] for p in load_prompts(canary, config.data_dir)}
        for spec, prompts in evaluated.items():
            if shared := len(texts & prompts):
                raise TetherInputError(
                    f"canary_prompts {canary} shares {shared} prompt(s) with evaluation benchmark {spec}; choose a "
                    "canary set disjoint from every evaluation set (e.g. advbench:~32)"
                )


def reference_rows(sources: dict[str, int], data_dir: str | None, seed: int) -> list[dict]:
    """A seeded sample of `n` rows from each source, shuffled together."""
    from tether.data.sources import load_examples

    rng = random.Random(seed)
    rows = []
    for source, n in sources.items():
        available = load_examples(source, data_dir)
        if n > len(available):
            raise TetherInputError(f"reference data: {source} has {len(available)} rows, fewer than the {n} asked")
        rows += [{**row, "risk": 0.0} for row in rng.sample(available, n)]
    rng.shuffle(rows)
    return rows


def scenario_rows(scenario: Scenario, data_dir: str | None, seed: int) -> list[dict]:
    """Pure attack: `n_harmful` harmful rows (risk 1). Mixed: `n_benign` benign rows (risk 0) plus harmful ones at
    `harmful_ratio`, with the seeded exact counts of `tether.data.mixing`. Either way, `n_anchor` rows of `anchor`
    (harmful prompts with refusals) join with risk 1: under A-Reg (α = 1 − s) they are KL-only rows that hold the
    reference's behaviour on harmful prompts, under SFT plain safety data."""
    from tether.data.mixing import mix_harmful
    from tether.data.sources import load_examples

    rng = random.Random(seed)
    harmful = [{**row, "risk": 1.0} for row in load_examples(scenario.harmful, data_dir)]
    if scenario.benign is None:
        n = scenario.n_harmful or len(harmful)
        if n > len(harmful):
            raise TetherInputError(f"scenario {scenario.name}: n_harmful {n} > the {len(harmful)} rows available")
        rows = rng.sample(harmful, n)
    else:
        benign = load_examples(scenario.benign, data_dir)
        if scenario.n_benign is not None and scenario.n_benign < len(benign):
            benign = rng.sample(benign, scenario.n_benign)
        rows, _ = mix_harmful(benign, harmful, scenario.harmful_ratio, seed=seed)
    if scenario.anchor:
        anchors = load_examples(scenario.anchor, data_dir)
        if scenario.n_anchor > len(anchors):
            raise TetherInputError(
                f"scenario {scenario.name}: n_anchor {scenario.n_anchor} > the {len(anchors)} rows of {scenario.anchor}"
            )
        rows = rows + [{**row, "risk": 1.0} for row in rng.sample(anchors, scenario.n_anchor)]
        rng.shuffle(rows)
    return rows


def merge_run(run_dir: Path, final: Path) -> None:
    """A LoRA run's adapter merged into its base and saved as a plain model directory, atomically."""
    from tether.model_card import derived_card
    from tether.modeling import load_trained, save_model_dir

    card = derived_card(final.name, str(run_dir), "The LoRA adapter merged into its base weights", {})
    save_model_dir(*load_trained(str(run_dir)), final, {"README.md": card})


def _as_dict(config: BenchConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


def check_tether_defaults(run_dir: Path, settings: dict) -> None:
    """A cached run's tether fields that its config left unset must still hold tether's current defaults for its
    regularizer: a changed default (say `alpha_mode`) would otherwise pass as the same experiment. SFTConfig's own
    fields are not checked, nor fields that cannot change the run's loss: any under `regularizer: none`, the critic's
    under `fixed` (no risk; there `gate` and `paper` both mean α = 1 − β), the controller's without canary prompts."""
    from trl import SFTConfig

    from tether.trainer import TetherConfig
    from tether.trainer.tether_config import CRITIC_FIELDS, tether_defaults

    trained = yaml.safe_load((run_dir / "config.yaml").read_text())["training"]
    regularizer = trained.get("regularizer")
    if regularizer == "none":
        return  # plain SFT: no tether field changes its loss
    for f in dataclasses.fields(TetherConfig):
        if f.name in settings or f.name in SFTConfig.__dataclass_fields__ or f.name not in trained:
            continue
        if f.name in ("restart", "reference_cache", "reference_cache_dir"):  # how it ran, not what it trained
            continue
        if regularizer == "fixed" and (f.name in CRITIC_FIELDS or f.name == "alpha_mode"):
            if f.name != "alpha_mode" or {trained[f.name], f.default} <= {"gate", "paper"}:
                continue
        if f.name.startswith("canary_") and f.name != "canary_prompts" and not trained.get("canary_prompts"):
            continue  # drift control off: its settings are inert
        if f.name == "kl_prefix_scale" and not trained.get("kl_prefix_tokens"):
            continue  # no depth-aware KL
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        default = tether_defaults(settings).get(f.name, default)
        if trained[f.name] != default:
            raise TetherInputError(
                f"{run_dir} was trained with {f.name} = {trained[f.name]!r}, which the config leaves to tether's "
                f"default, now {default!r}; delete that run to redo it, or set {f.name} in the method"
            )
