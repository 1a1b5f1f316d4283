"""`spunge push`."""

from __future__ import annotations

from pathlib import Path

import typer

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import human_bytes
from spunge_merge.hub import HUB_FILE_LIMIT
from spunge_merge.pipeline.publish import push_output


def push_command(
    model_dir: Path = typer.Argument(..., help="What to publish: a merged model (`spunge merge`), one run of `spunge unlearn` "
                                     "(a LoRA adapter, or with --materialize any run as a full model), or a model directory."),
    repo: str = typer.Option(..., "--repo", help="Hub repository OWNER/NAME; created if missing (exist_ok)."),
    private: bool = typer.Option(False, "--private", help="Create the repository private (ignored if it already exists)."),
    revision: str = typer.Option(None, "--revision",
                                 help="Branch to commit to; created from main if missing (default: main)."),
    create_pr: bool = typer.Option(False, "--create-pr",
                                   help="Open a pull request with the commit instead of committing to the branch."),
    commit_message: str = typer.Option(None, "--commit-message",
                                       help="Commit title (default: 'Upload DIR (spunge KIND)')."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Run the checks, print the files, sizes and model card; upload nothing, need no token."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Also push .bin/.pt/.pth/.ckpt/.pkl files (refused by default: pickles run code "
                                           "when loaded)."),
    dataset: list[str] = typer.Option([], "--dataset",
                                      help="Hub dataset id for the card's `datasets` metadata (repeatable), e.g. "
                                           "toxigen/toxigen-data; data read from local files has no id of its own."),
    exclude: list[str] = typer.Option([], "--exclude",
                                      help="Glob of paths in DIR not to push (repeatable), e.g. 'eval/generations.jsonl' or "
                                           "'eval'. Hidden paths (.git, .cache) are never pushed."),
    eval_dir: list[Path] = typer.Option([], "--eval",
                                        help="A `spunge eval` output folder kept outside DIR (repeatable): pushed as "
                                             "eval/<folder name>/ and shown in the model card."),
    task: str = typer.Option(None, "--task", help="What was unlearned, for the card's warning and usage example: toxicity, "
                             "knowledge or other (default: read from the evaluations and the data's names)."),
    materialize: bool = typer.Option(False, "--materialize", help="Push a run of `spunge unlearn` as a full model: its base "
                                     "with the run's update (needed for tensor-delta runs such as RMU's)."),
    base: str = typer.Option(None, "--base", help="With --materialize: the base model (default: the one in the run's spunge.json)."),
) -> None:
    """Check a spunge output (merged model, run, adapter), write its model card, and publish it to the Hugging Face Hub in one commit.

    The token comes from HF_TOKEN or `hf auth login` and is never printed or written. Before uploading,
    the directory must have a config transformers loads, safetensors weights whose index matches the
    shards, no file over the Hub's 50 GB limit, and no token-like string in any text file.
    """
    if base and not materialize:
        raise SpungeError("--base is used only with --materialize")
    result = push_output(model_dir, repo, materialize=materialize, base=base, private=private, revision=revision,
                         create_pr=create_pr, commit_message=commit_message, dry_run=dry_run, allow_pickle=allow_pickle,
                         datasets=list(dataset) or None, exclude=list(exclude) or None,
                         eval_dirs=list(eval_dir) or None, task=task)
    target = f"a pull request against {revision or 'main'}" if create_pr else f"branch {revision or 'main'}"
    visibility = " (private if new)" if private else ""
    verb = "Would commit" if dry_run else "Committed"
    typer.echo(f"{verb} {len(result['files'])} files ({human_bytes(result['total_size'])}) to {repo}{visibility}, "
               f"one commit on {target}:")
    width = max(len(human_bytes(f["size"])) for f in result["files"])
    typer.echo(f"  {'storage':<8} {'size':>{width}}  path   (storage as the Hub will likely choose: LFS/Xet for binary or > 10 MB)")
    for entry in result["files"]:
        typer.echo(f"  {entry['storage']:<8} {human_bytes(entry['size']):>{width}}  {entry['path']}")
    checks = result["checks"]
    typer.echo(f"Checks passed ({checks['subject']}): loads ({checks['architecture']}); "
               f"{len(checks['shards'])} safetensors shard(s), "
               f"{checks['tensors']} tensors{', index consistent' if checks['indexed'] else ''}; "
               + (f"pickle files allowed: {', '.join(checks['pickles'])}; " if checks["pickles"] else "no pickle files; ")
               + f"no file over {human_bytes(HUB_FILE_LIMIT)}; no token-like strings.")
    for path in result["deleted"]:
        typer.echo(f"Removed stale weight file from the branch: {path}")
    if dry_run:
        typer.echo("----- README.md (model card) -----")
        typer.echo(result["card"], nl=not result["card"].endswith("\n"))
        typer.echo("----- end of README.md -----")
        typer.echo("Dry run: nothing was uploaded.")
        return
    typer.echo(f"Pull request: {result['pr_url']}" if result["pr_url"] else f"Commit: {result['commit_url']}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("push")(push_command)
