"""The fault-scenario table of docs/reliability.md: what is done to a run, how it ends, and the exact line
the user sees. `tests/test_reliability.py` drives every row (each names its test) and asserts the messages
below (`MESSAGES`, filled in with the run's paths); a test checks that the doc shows exactly `render()`
(`python -m tests.fault_scenarios` prints it).

Templates: {run} the run directory, {sweep} the sweep directory, {pid} / {host} / {started} the process that
holds a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTINUE_RUN = "the same command with hydra.run.dir={run} continues the run"
MESSAGES = {
    "sigterm": "preempted by SIGTERM at epoch 2, step 1/4: checkpoint written; exiting with status 75 "
    f"({CONTINUE_RUN})",
    "ctrl_c": "interrupted by Ctrl-C (SIGINT) at epoch 2, step 1/4: checkpoint written; exiting with status "
    f"130 ({CONTINUE_RUN})",
    "ctrl_c_twice": f"error: stopped by Ctrl-C; {CONTINUE_RUN}",
    "final": "preempted by SIGTERM during the final evaluation: checkpoint written; exiting with status 75 "
    f"({CONTINUE_RUN})",
    "disk_full": "error: cannot write {run}/{path}: No space left on device; nothing half-written was kept: "
    f"make room, then {CONTINUE_RUN}",
    "in_use": "error: run dir {run} is in use by a live run (pid {pid} on {host}, started {started}); one "
    "run directory holds one running process: wait for it to end (or stop it), or choose a new hydra.run.dir",
    "rebuilt": "metrics.jsonl {why}: rebuilt from checkpoints/last.pt (epochs 1-3)",
    "sweep": "preempted by SIGTERM at epoch 2, step 1/4: checkpoint written; exiting with status 75 (the "
    "same command with hydra.sweep.dir={sweep} continues the sweep)",
    "diverged": "error: training diverged: the loss became nan at epoch 2, step 2 (global step 6); the last "
    "good checkpoint {run}/checkpoints/last.pt is kept and summary.json has status: diverged. Lower lr or "
    "rho, or set trainer.on_nonfinite=skip to skip such steps",
}


@dataclass(frozen=True)
class Scenario:
    fault: str  # what is done to the run
    ends: str  # how it ends: exit status and what the run directory then holds
    test: str  # the test in tests/test_reliability.py that drives it
    message: str = ""  # a key of MESSAGES: the exact last line of stderr (or the warning, where said)


KILL = "test_sigkill_mid_epoch_in_evaluation_and_in_checkpoint_write_then_resume_exactly"
TERM = "test_sigterm_and_sigusr1_checkpoint_mid_epoch_exit_75_and_resume_exactly"
INT = "test_ctrl_c_checkpoints_a_second_stops_at_once_sigterm_in_the_final_sharpness_hands_off"
ENOSPC = "test_disk_full_anywhere_leaves_no_tmp_names_the_path_and_the_same_command_continues"
DAMAGE = "test_damaged_bookkeeping_of_a_finished_run_is_rebuilt_from_the_checkpoint"
NAN = "test_nan_stops_with_epoch_and_step_keeps_last_good_checkpoint_then_skip_mode_finishes"

SCENARIOS = [
    Scenario(
        "SIGKILL while writing the very first checkpoint",
        "exit -9; `.claim`, `metrics.jsonl` = [1], `last.pt.tmp`, no checkpoint; the same command starts "
        "over by itself (nothing was lost)",
        KILL,
    ),
    Scenario(
        "SIGKILL mid-epoch (after step 6 = epoch 2, step 2)", "exit -9; checkpoint of epoch 1, [1]", KILL
    ),
    Scenario(
        "SIGKILL during the evaluation of epoch 2 (after resuming)", "exit -9; checkpoint of epoch 1", KILL
    ),
    Scenario(
        "SIGKILL while writing epoch 2's checkpoint",
        "exit -9; `last.pt` = epoch 1 and readable, `last.pt.tmp` left over, `metrics.jsonl` = [1, 2]; the "
        "resume cuts it to [1], removes the `.tmp` and finishes identically",
        KILL,
    ),
    Scenario(
        "SIGTERM after step 5",
        "exit 75; checkpoint at epoch 2, step 1 with the partial epoch's sums",
        TERM,
        "sigterm",
    ),
    Scenario("SIGUSR1 after step 10 (resumed)", "exit 75; checkpoint at epoch 3, step 2", TERM),
    Scenario(
        "SIGTERM during the evaluation of epoch 3 (resumed)",
        "exit 75 after epoch 3's checkpoint, no summary yet; the resume only writes the summary, identically",
        TERM,
    ),
    Scenario(
        "SIGTERM after step 5 in a `hydra/launcher=submitit_local` sweep job",
        "submitit requeues (exit 144), the job restarts in the same directory, resumes at epoch 2, step 1 "
        "and finishes identically; the sweep exits 0",
        "test_submitit_requeues_a_preempted_sweep_job_which_resumes_in_the_same_dir",
    ),
    Scenario(
        "Ctrl-C (SIGINT) after step 5",
        "exit 130 with one line; checkpoint at epoch 2, step 1",
        INT,
        "ctrl_c",
    ),
    Scenario(
        "Ctrl-C twice at step 7 (resumed)",
        "exit 130 at once, no traceback; the checkpoint of the first Ctrl-C unchanged, no `.tmp`",
        INT,
        "ctrl_c_twice",
    ),
    Scenario(
        "SIGTERM at the 3rd forward pass of the final metrics (inside the Hessian-vector products of the "
        "final sharpness)",
        "exit 75 within one forward pass; checkpoint of epoch 3, no summary; the resume computes only the "
        "final metrics, identically",
        INT,
        "final",
    ),
    Scenario(
        "disk full (ENOSPC) writing `.hydra/config.yaml` at the start",
        "exit 74 with one line naming the file (as below); no `.tmp`",
        ENOSPC,
    ),
    Scenario(
        "ENOSPC writing epoch 2's checkpoint",
        "exit 74; `last.pt` = epoch 1, no `last.pt.tmp`",
        ENOSPC,
        "disk_full",
    ),
    Scenario(
        "ENOSPC appending epoch 3 to `metrics.jsonl`",
        "exit 74; `metrics.jsonl` = [1, 2], no torn line; checkpoint of epoch 2",
        ENOSPC,
    ),
    Scenario(
        "ENOSPC writing `summary.json`",
        "exit 74; no `summary.json`, no `.tmp`; the same command then finishes identically",
        ENOSPC,
    ),
    Scenario(
        "the same command started again while the first still runs (the first stopped after step 2)",
        "the second exits 1 with one line naming the first's pid and host; the directory is byte-identical; "
        "the first then finishes identically",
        "test_a_second_start_in_a_running_run_directory_is_refused_and_changes_nothing",
        "in_use",
    ),
    Scenario(
        "a `.claim` nobody holds: its process ended, it names another node, or it is empty",
        "taken over without asking; the run trains",
        "test_a_claim_nobody_holds_is_taken_over",
    ),
    Scenario(
        "a finished run whose `metrics.jsonl` is missing, started again",
        "exit 0; `metrics.jsonl` rebuilt from the checkpoint (a warning in `train.log`), nothing else "
        "touched",
        DAMAGE,
        "rebuilt",
    ),
    Scenario(
        "a finished run with a torn line in the middle of `metrics.jsonl`",
        "exit 0; rebuilt from the checkpoint",
        DAMAGE,
    ),
    Scenario(
        "a finished run whose `summary.json` is truncated",
        "exit 0; the final metrics are computed again from the final checkpoint, identically",
        DAMAGE,
    ),
    Scenario(
        "NaN loss at step 6 (`trainer.on_nonfinite=stop`)",
        "exit 3; checkpoint of epoch 1 (finite), `summary.json` `status: diverged`",
        NAN,
        "diverged",
    ),
    Scenario(
        "the same run started again with `trainer.on_nonfinite=skip`",
        "finishes; `train/skipped_steps` = 1 in epoch 2, 0 in epoch 3; weights finite",
        NAN,
    ),
    Scenario(
        "`skip` on SGD and SAM directly: a NaN first step, a NaN step later, a NaN only in SAM's perturbed "
        "pass",
        "weights, BatchNorm buffers, momentum and sums equal to before the step; after a skipped first step "
        "the next step equals a fresh optimizer's first step",
        "test_skip_mode_leaves_weights_buffers_optimizer_state_and_sums_as_before_the_bad_step",
    ),
    Scenario(
        "two runs started at the same moment with the default run directory",
        "two directories, each named with its own pid, both finish",
        "test_two_runs_started_together_get_their_own_directories",
    ),
    Scenario(
        "16 overrides (~500 bytes) with the default run directory",
        "exit 0; the name is at most 120 bytes: the first 80 bytes of the overrides and 8 hex digits of "
        "their SHA-1; all 16 in `.hydra/overrides.yaml`",
        "test_default_run_directory_names_fit_the_file_name_limit",
    ),
    Scenario(
        "a plain `-m` sweep of 2 jobs with the same 16 overrides; job 1 preempted (SIGTERM)",
        "exit 75; the same command, run again, finds the same sweep directory, leaves job 0 byte-identical "
        "(not retrained) and finishes job 1 from its checkpoint; jobs are named `0_seed=0`, `1_seed=1`",
        "test_a_preempted_sweep_is_continued_by_the_same_command",
        "sweep",
    ),
    Scenario(
        "a sweep whose first job has a bad value (`lr=-1,0.05`)",
        "job 0 fails with one message and writes no checkpoint; job 1 finishes; the sweep exits 1 naming "
        "`lr=-1`",
        "test_failed_sweep_job_is_named_and_leaves_the_other_jobs_intact",
    ),
    Scenario(
        "`deterministic=true`, the same seed twice (and another seed)",
        "identical `summary.json` metrics (different with another seed)",
        "test_deterministic_runs_with_the_same_seed_give_identical_summaries",
    ),
]


def _cell(text: str) -> str:
    return text.replace("<", "&lt;").replace("|", "\\|")


def render() -> str:
    """The scenario table of docs/reliability.md (paths as RUN, SWEEP; the owner as PID, HOST, STARTED)."""
    subs = {"{run}": "RUN", "{sweep}": "SWEEP", "{pid}": "PID", "{host}": "HOST", "{started}": "STARTED"}
    subs.update({"{path}": "checkpoints/last.pt", "{why}": "was missing"})
    out = ["| # | fault | how it ends | what the user sees |", "|---|---|---|---|"]
    for n, s in enumerate(SCENARIOS, 1):
        shown = MESSAGES[s.message] if s.message else ""
        for k, v in subs.items():
            shown = shown.replace(k, v)
        out.append(f"| {n} | {_cell(s.fault)} | {_cell(s.ends)} | {_cell(shown)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render())
