"""RMU: equal, step by step, to a reference-style implementation written here (two full models, a
forward hook on layer ℓ, full forwards), only the configured tensors change, corpora alternate,
split mode, resume, materialize, and every refusal through the CLI (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_CORPUS
from safetensors.torch import load_file
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.config import build_config
from spunge_merge.data.split import split_dataset
from spunge_merge.errors import SpungeError
from spunge_merge.unlearn import registry
from spunge_merge.unlearn.rmu import RMUConfig, materialize, train_rmu

runner = CliRunner()
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "rmu-smollm2.yaml"
# Large enough that a few steps move the tiny model visibly, small enough to stay well conditioned.
FAST = {"lr": 5e-3, "steering_coeff": 4.0, "alpha": 20.0, "batch_size": 3, "device": "cpu", "dtype": "float32"}

FORGET_TEXTS = [
    "the quick brown fox jumps over the lazy dog again and again",
    "cats",
    "paris is the capital of france",
    "water boils at one hundred degrees celsius at sea level every day",
    "a group of people",
    "numbers like one two three four five six seven eight nine ten eleven",
    "the sun rises in the east",
    "dogs live together in the small house near the river bank",
    "berlin is the capital of germany",
    "ten nine eight",
    "the lazy dog sleeps",
    "people walked to the market to buy bread and milk and cheese",
]
OTHER_TEXTS = [f"{a} {b}" for a, b in zip(TINY_CORPUS, reversed(TINY_CORPUS), strict=True)] + ["one two", "the house"]


def spunge(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rmu-data")
    retain = root / "retain.txt"
    retain.write_text("\n".join(reversed(TINY_CORPUS * 3)) + "\n", encoding="utf-8")
    return {"forget": write_jsonl(root / "forget.jsonl", FORGET_TEXTS),
            "other": write_jsonl(root / "other.jsonl", OTHER_TEXTS), "retain": retain}


def cfg(**changes) -> RMUConfig:
    return RMUConfig(**(FAST | changes))


def run_history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "spunge.json").read_text())["result"]["history"]


# ------------------------------------------------------------------------------------------------
# The reference, written the way the WMDP script does it


def reference_rmu(model_dir: Path, forget: list[list[str]], retain: list[str], *, layer: int, update_layers: list[int],
                  coeffs: list[float], alphas: list[float], lr: float, batch_size: int, steps: int, seed: int,
                  forget_max_lengths: list[int], mask_padding: bool):
    """Two full models, a forward hook on layer ℓ, three full forwards per step, param index 6 of each update layer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    frozen = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    updated = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token_id = tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "right"
    params = [p for i in update_layers for j, p in enumerate(updated.model.layers[i].parameters()) if j == 6]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    controls = []
    for c in coeffs:
        random_vector = torch.rand(1, 1, updated.config.hidden_size)
        controls.append(random_vector / torch.norm(random_vector) * c)

    def forward_with_cache(model, inputs, no_grad):
        cache = []
        hook = model.model.layers[layer].register_forward_hook(lambda m, i, o: cache.append(o[0] if isinstance(o, tuple) else o))
        with torch.set_grad_enabled(not no_grad):
            model(**inputs)
        hook.remove()
        return cache[0]

    def mse(a, b, mask):
        squared = (a - b.expand_as(a)) ** 2
        if not mask_padding:
            return squared.mean()
        per_token = squared.mean(dim=-1) * mask
        return (per_token.sum(dim=1) / mask.sum(dim=1)).mean()

    batches = [[texts[i:i + batch_size] for i in range(0, len(texts), batch_size)] for texts in forget]
    retain_batches = [retain[i:i + batch_size] for i in range(0, len(retain), batch_size)]
    losses = []
    for idx in range(steps):
        topic, batch = idx % len(forget), idx // len(forget)
        forget_inputs = tokenizer(batches[topic][batch], return_tensors="pt", padding=True, truncation=True,
                                  max_length=forget_max_lengths[topic])
        forget_loss = mse(forward_with_cache(updated, forget_inputs, False), controls[topic], forget_inputs["attention_mask"])
        retain_inputs = tokenizer(retain_batches[batch], return_tensors="pt", padding=True, truncation=True, max_length=512)
        updated_retain = forward_with_cache(updated, retain_inputs, False)
        frozen_retain = forward_with_cache(frozen, retain_inputs, True)
        retain_loss = mse(updated_retain, frozen_retain, retain_inputs["attention_mask"]) * alphas[topic]
        optimizer.zero_grad()
        (forget_loss + retain_loss).backward()
        optimizer.step()
        losses.append((forget_loss.item(), retain_loss.item()))
    tensors = {f"model.layers.{i}.mlp.down_proj.weight": updated.model.layers[i].mlp.down_proj.weight.detach().clone()
               for i in update_layers}
    return losses, tensors


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def assert_same_run(run_dir: Path, losses, tensors, base_dir: Path):
    history = run_history(run_dir)
    assert len(history) == len(losses)
    got = torch.tensor([[h["forget_loss"], h["retain_loss"]] for h in history])
    want = torch.tensor(losses)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert want[1:, 1].abs().max() > 0  # the retain term is live, not trivially zero
    delta = load_file(run_dir / "delta.safetensors")
    base = load_file(base_dir / "model.safetensors")
    assert sorted(delta) == sorted(tensors)
    for name, value in tensors.items():
        torch.testing.assert_close(delta[name], value, rtol=1e-5, atol=1e-6)
        assert (value - base[name]).abs().max() > 1e-3  # the tensors did move


@pytest.mark.parametrize(("layer", "update_layers", "mask_padding"),
                         [(7, [5, 6, 7], False), (7, [5, 6, 7], True), (5, [2, 4], False), (5, [2, 4], True)])
def test_matches_reference_implementation(tiny_model, data, tmp_path, layer, update_layers, mask_padding):
    config = cfg(layer=layer, update_layers=update_layers, mask_padding=mask_padding, max_num_batches=4, seed=7,
                 data_order="reference")
    outcome, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run", config, progress=False)
    losses, tensors = reference_rmu(tiny_model, [FORGET_TEXTS], read_lines(data["retain"]), layer=layer,
                                    update_layers=update_layers, coeffs=[4.0], alphas=[20.0], lr=5e-3, batch_size=3, steps=4,
                                    seed=7, forget_max_lengths=[512], mask_padding=mask_padding)
    assert_same_run(outcome.path, losses, tensors, tiny_model)
    result = json.loads((outcome.path / "spunge.json").read_text())["result"]
    assert result["steps"] == 4 and result["first_updated_layer"] == update_layers[0]


def test_several_corpora_alternate_with_their_own_vector_alpha_and_length(tiny_model, data, tmp_path):
    config = cfg(steering_coeff=[4.0, 9.0], alpha=[20.0, 5.0], forget_max_length=[512, 4], max_num_batches=5,
                 data_order="reference")
    outcome, = train_rmu(str(tiny_model), [data["forget"], data["other"]], data["retain"], tmp_path / "run", config, progress=False)
    # As in the reference, steps = min(max_num_batches, batches of the smallest corpus): min(5, 4, 3, 7) = 3.
    losses, tensors = reference_rmu(tiny_model, [FORGET_TEXTS, OTHER_TEXTS], read_lines(data["retain"]), layer=7,
                                    update_layers=[5, 6, 7], coeffs=[4.0, 9.0], alphas=[20.0, 5.0], lr=5e-3, batch_size=3,
                                    steps=3, seed=42, forget_max_lengths=[512, 4], mask_padding=False)
    history = run_history(outcome.path)
    assert [(h["corpus"], h["batch"]) for h in history] == [(0, 0), (1, 0), (0, 1)]
    assert_same_run(outcome.path, losses, tensors, tiny_model)
    record = json.loads((outcome.path / "spunge.json").read_text())
    assert record["result"]["steering_coeff"] == [4.0, 9.0] and record["attribute"] is None
    assert [d["rows"] for d in record["data"]["forget"]] == [len(FORGET_TEXTS), len(OTHER_TEXTS)]


# ------------------------------------------------------------------------------------------------
# Output, materialize, split mode, resume


def test_only_configured_tensors_change_and_materialize_loads_in_transformers(tiny_model, data, tmp_path):
    from transformers import AutoModelForCausalLM

    config = cfg(param_regex=r"model\.layers\.(3|6)\.self_attn\.o_proj\.weight", max_num_batches=3)
    outcome, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run", config, progress=False)
    delta = load_file(outcome.path / "delta.safetensors")
    assert sorted(delta) == ["model.layers.3.self_attn.o_proj.weight", "model.layers.6.self_attn.o_proj.weight"]

    result = spunge("materialize", outcome.path, "--out", tmp_path / "full")
    assert result.exit_code == 0, result.output
    base = load_file(tiny_model / "model.safetensors")
    full = load_file(tmp_path / "full" / "model.safetensors")
    assert sorted(full) == sorted(base)
    changed = sorted(name for name in base if not torch.equal(base[name], full[name]))
    assert changed == sorted(delta)
    for name in changed:
        assert torch.equal(full[name], delta[name])

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "full", dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    reference.load_state_dict(base | delta)
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
        assert not torch.allclose(model(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits)
    record = json.loads((tmp_path / "full" / "spunge.json").read_text())
    assert record["kind"] == "materialized-model" and record["run"]["updated_tensors"] == sorted(delta)
    assert (tmp_path / "full" / "tokenizer.json").is_file()


def test_split_directory_runs_each_subset_from_the_same_base(tiny_model, tiny_dataset, data, tmp_path):
    split_dataset(tiny_dataset, by="group", out=tmp_path / "split")
    config = cfg(max_num_batches=2)
    outcomes = train_rmu(str(tiny_model), [tmp_path / "split"], data["retain"], tmp_path / "runs", config, progress=False)
    assert [o.name for o in outcomes] == ["alpha", "beta", "gamma"]
    manifest = json.loads((tmp_path / "runs" / "manifest.json").read_text())
    assert manifest["kind"] == "unlearn-runs" and manifest["method"] == "rmu" and manifest["attribute"] == "group"
    record = json.loads((tmp_path / "runs" / "gamma" / "spunge.json").read_text())
    assert record["kind"] == "rmu-delta" and record["attribute"] == {"column": "group", "value": "gamma"}
    # The last subset, trained after two others in the same process, equals a fresh run on its file alone:
    # every subset starts from the base weights and a fresh optimizer.
    alone, = train_rmu(str(tiny_model), [tmp_path / "split" / "gamma.jsonl"], data["retain"], tmp_path / "alone", config,
                       progress=False)
    for name, value in load_file(alone.path / "delta.safetensors").items():
        assert torch.equal(value, load_file(tmp_path / "runs" / "gamma" / "delta.safetensors")[name])
    assert run_history(alone.path) == run_history(tmp_path / "runs" / "gamma")
    with pytest.raises(SpungeError, match="holds several runs"):
        materialize(None, tmp_path / "runs", tmp_path / "full")


def test_resume_skips_complete_runs_and_refuses_changed_settings(tiny_model, data, tmp_path):
    config = cfg(max_num_batches=2)
    first, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run", config, progress=False)
    stamp = (first.path / "delta.safetensors").stat().st_mtime_ns
    again, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run", cfg(max_num_batches=2, device="auto"),
                       progress=False)
    assert again.skipped and (first.path / "delta.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(SpungeError, match="different settings"):
        train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run", cfg(max_num_batches=3), progress=False)
    forced, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run", cfg(max_num_batches=3), force=True,
                        progress=False)
    assert not forced.skipped and len(run_history(forced.path)) == 3


def test_epochs_early_stop_and_prefix_cache(tiny_model, data, tmp_path):
    # The reference's fixed order: the same batches recur every epoch, so the prefix cache is used.
    def cfg(**changes):
        return RMUConfig(**(FAST | {"data_order": "reference"} | changes))

    plain, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "plain", cfg(epochs=2, max_num_batches=3),
                       progress=False)
    cached, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "cached",
                        cfg(epochs=2, max_num_batches=3, cache_prefix=True), progress=False)
    assert [h["epoch"] for h in run_history(plain.path)] == [1, 1, 1, 2, 2, 2]
    assert run_history(plain.path) == run_history(cached.path)
    for name, value in load_file(plain.path / "delta.safetensors").items():
        assert torch.equal(value, load_file(cached.path / "delta.safetensors")[name])

    # Stop once the forget cosine (logged before each update) falls below a threshold reached mid-run.
    cosines = [h["forget_cosine"] for h in run_history(plain.path)]
    threshold = (cosines[2] + cosines[3]) / 2 if cosines[3] < cosines[2] else None
    assert threshold is not None, cosines
    stopped, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "stopped",
                         cfg(epochs=2, max_num_batches=3, early_stop_cosine=threshold), progress=False)
    result = json.loads((stopped.path / "spunge.json").read_text())["result"]
    first_below = next(i for i, c in enumerate(cosines, 1) if c < threshold)
    assert result["early_stop_step"] == first_below and result["steps"] == first_below - 1
    assert result["early_stop"]["threshold"] == threshold

    # With a window, the mean of the last N forget cosines is compared instead.
    threshold = (sum(cosines[-2:]) / 2 + sum(cosines[-3:-1]) / 2) / 2
    expected = next(i for i in range(2, len(cosines) + 1) if sum(cosines[i - 2:i]) / 2 < threshold)
    windowed, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "windowed",
                          cfg(epochs=2, max_num_batches=3, early_stop_cosine=threshold, early_stop_window=2), progress=False)
    result = json.loads((windowed.path / "spunge.json").read_text())["result"]
    assert result["early_stop_step"] == expected and result["early_stop"]["window"] == 2
    assert result["early_stop"]["mean_forget_cosine"] == pytest.approx(sum(cosines[expected - 2:expected]) / 2)


def test_auto_steering_scales_the_mean_layer_norm_of_the_forget_data(tiny_model, data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    outcome, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run",
                         cfg(steering_coeff="auto:3", max_num_batches=2, data_order="reference"), progress=False)
    result = json.loads((outcome.path / "spunge.json").read_text())["result"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.padding_side = "left"
    norms, final_normed = [], []
    captured = []
    model.model.layers[7].register_forward_hook(lambda module, args, output: captured.append(output))
    for start in range(0, len(FORGET_TEXTS), 3):  # the first 4 batches of 3
        inputs = tokenizer(FORGET_TEXTS[start:start + 3], return_tensors="pt", padding=True)
        with torch.no_grad():
            last = model(**inputs, output_hidden_states=True).hidden_states[-1]
        norms.extend(captured.pop().norm(dim=-1).mean(dim=1).tolist())
        final_normed.extend(last.norm(dim=-1).mean(dim=1).tolist())
    # Layer 7 is the last layer here: transformers 5 puts the final norm into hidden_states[-1], which is not layer 7's output.
    assert abs(sum(final_normed) - sum(norms)) > 0.1 * sum(norms)
    assert result["steering_mode"] == ["auto"]
    assert result["steering_coeff"][0] == pytest.approx(3 * sum(norms) / len(norms), rel=1e-5)


def test_registered_and_recipe_is_a_valid_config(tmp_path):
    method = registry.get_method("rmu")
    assert method.config_class is RMUConfig and method.retain == "required" and method.output_kind(RMUConfig()) == "tensor-delta"
    recipe = build_config(RMUConfig, config_file=RECIPE)
    assert recipe.layer >= max(recipe.update_layers)
    overridden = build_config(RMUConfig, config_file=RECIPE, overrides={"lr": 1e-4, "alpha": None})
    assert overridden.lr == 1e-4 and overridden.alpha == recipe.alpha


# ------------------------------------------------------------------------------------------------
# Refusals, through the CLI: one line, exit code 2, nothing written


def test_cli_runs_with_config_file_and_overrides(tiny_model, data, tmp_path):
    config_file = tmp_path / "rmu.yaml"
    config_file.write_text("lr: 0.005\nsteering_coeff: 4.0\nalpha: 20\nbatch_size: 3\nmax_num_batches: 2\ndevice: cpu\n")
    result = spunge("unlearn", "rmu", "--model", tiny_model, "--forget", data["forget"], "--retain", data["retain"],
                    "--out", tmp_path / "run", "--config", config_file, "--alpha", "7", "--update-layers", "6,7", "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "spunge.json").read_text())
    assert record["config"]["alpha"] == 7 and record["config"]["lr"] == 0.005 and record["config"]["update_layers"] == [6, 7]
    assert record["result"]["updated_tensors"] == ["model.layers.6.mlp.down_proj.weight", "model.layers.7.mlp.down_proj.weight"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--layer", "8"], "beyond the depth"),
    (["--layer", "6"], "update layer 7 is above layer 6"),
    (["--param-regex", r"model\.layers\.5\.mlp\.nothing"], "matches no tensor"),
    (["--param-regex", r"model\.layers\.7\.mlp\.down_proj\.weight", "--layer", "6"], "above --layer 6"),
    (["--param-regex", r"model\.norm\.weight"], "not inside a decoder layer"),
    (["--steering-coeff", "1e20"], "not finite"),
    (["--steering-coeff", "auto:x"], "steering"),
    (["--alpha", "1,2"], "2 values but there are 1 forget corpora"),
])
def test_cli_refuses_bad_settings(tiny_model, data, tmp_path, extra, message):
    result = spunge("unlearn", "rmu", "--model", tiny_model, "--forget", data["forget"], "--retain", data["retain"],
                    "--out", tmp_path / "run", "--device", "cpu", "--max-num-batches", "2", "--quiet", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_cli_refuses_empty_data(tiny_model, data, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "  "}) + "\n")
    for forget, retain in ((empty, data["retain"]), (data["forget"], empty)):
        result = spunge("unlearn", "rmu", "--model", tiny_model, "--forget", forget, "--retain", retain, "--out", tmp_path / "run",
                        "--quiet")
        assert result.exit_code == 2 and "no non-empty text" in result.output, result.output
    result = spunge("unlearn", "rmu", "--model", tiny_model, "--forget", data["forget"], "--retain", data["retain"],
                    "--out", tmp_path / "run", "--min-chars", "500", "--quiet")
    assert result.exit_code == 2 and "longer than 500 characters" in result.output
    assert not (tmp_path / "run").exists()


def test_nan_loss_in_split_mode_stops_and_writes_no_run(tiny_model, tiny_dataset, data, tmp_path):
    split_dataset(tiny_dataset, by="group", out=tmp_path / "split")
    with pytest.raises(SpungeError, match="not finite at step 1"):
        train_rmu(str(tiny_model), [tmp_path / "split"], data["retain"], tmp_path / "runs", cfg(steering_coeff=1e20), progress=False)
    # The runs manifest is written first (an interrupted fan-out resumes); no run directory, no temporary.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["manifest.json"]


def test_materialize_refuses_a_wrong_base_and_a_runs_directory(tiny_model, data, tmp_path):
    from conftest import build_tiny_llama

    outcome, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run", cfg(max_num_batches=1), progress=False)
    other = build_tiny_llama(tmp_path / "other", layers=6)
    result = spunge("materialize", outcome.path, "--model", other, "--out", tmp_path / "full")
    assert result.exit_code == 2 and "different base model" in result.output, result.output
    result = spunge("materialize", tmp_path, "--out", tmp_path / "full")
    assert result.exit_code == 2 and "not an RMU run" in result.output, result.output
    assert not (tmp_path / "full").exists()


def test_partial_load_reads_only_embeddings_and_layers_up_to_l(tiny_model, monkeypatch):
    import safetensors

    from spunge_merge.models import resolve_model
    from spunge_merge.unlearn.partial_model import load_partial_decoder

    read: list[str] = []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, name):
            read.append(name)
            return self.handle.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    partial = load_partial_decoder(resolve_model(tiny_model), 4, dtype=torch.float32, device="cpu")
    assert len(partial.model.layers) == 5 and not hasattr(partial.model, "lm_head")
    everything = load_file(tiny_model / "model.safetensors")
    wanted = {n for n in everything if n.startswith("model.embed_tokens") or n == "model.norm.weight"
              or (n.startswith("model.layers.") and int(n.split(".")[2]) <= 4)}
    assert sorted(read) == sorted(wanted)
    for name, value in partial.model.state_dict().items():
        assert torch.equal(value, everything[partial.checkpoint_names[name]])
