"""Publish a merged model directory to the Hugging Face Hub: check it, then upload it in one commit.

Why one commit: `create_commit` uploads the large files first (LFS/Xet blobs are invisible until
committed) and then makes a single commit, so a failure at any point leaves the repository as
it was. (`upload_folder` may split a large folder into several commits when hf_xet is installed.)

Why the checks: a pushed repository is public and hard to take back. Before anything leaves the
machine we make sure transformers can read the config, the weights are safetensors (pickles
run code when loaded), the shard index matches the shards, no file exceeds the Hub's
single-file limit and no text file holds something that looks like a credential.

The token comes from the caller, `HF_TOKEN` or `hf auth login` (`huggingface_hub.get_token`);
it is only ever handed to `HfApi`, never printed, logged or written.

The package: `checks` (config, weights, index, credentials, repo id), `paths` (local paths scrubbed),
`plan` (`plan_push`: what would be committed), `upload` (`push_model`: the commit, the Hub's errors).
Every public name stays importable from `spunge_merge.hub`.
"""

from __future__ import annotations

from spunge_merge.hub.checks import INDEX_NAME, LFS_THRESHOLD, PICKLE_SUFFIXES, WEIGHT_SUFFIXES, collect_files, find_secrets
from spunge_merge.hub.paths import path_replacements, scrub_local_paths
from spunge_merge.hub.plan import HUB_FILE_LIMIT, PushPlan, UploadFile, eval_repo_paths, plan_push
from spunge_merge.hub.upload import push_model, resolve_token

__all__ = [
    "HUB_FILE_LIMIT", "INDEX_NAME", "LFS_THRESHOLD", "PICKLE_SUFFIXES", "WEIGHT_SUFFIXES", "PushPlan", "UploadFile", "collect_files",
    "eval_repo_paths", "find_secrets", "path_replacements", "plan_push", "push_model", "resolve_token", "scrub_local_paths",
]
