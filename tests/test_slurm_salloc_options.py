"""``slurm.start: salloc``: a batch script's ``#SBATCH`` lines as salloc's options (no Slurm needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")

from spibatch.backends.slurm_salloc import GRANTED, refused, salloc_env, salloc_words, sbatch_lines  # noqa: E402

SCRIPT = """#!/bin/bash

#SBATCH --job-name=parsl.tasks.block-0.17
#SBATCH --output=/runs/r/submit_scripts/parsl.tasks.block-0.17.stdout
#SBATCH --error=/runs/r/submit_scripts/parsl.tasks.block-0.17.stderr
#SBATCH --nodes=2
#SBATCH --time=15
#SBATCH --ntasks-per-node=1
#SBATCH --partition=debug
#SBATCH --array=1-3 --open-mode=append --export=ALL -Q
#SBATCH -o "/other dir/x.out" --exclusive --chdir=/work   # a comment
#SBATCH --cpus-per-task=2

export PATH=/env/bin:$PATH
#SBATCH --mem=4g
srun --ntasks 2 -l bash cmd
"""


def test_sbatch_lines_end_at_the_first_command_as_sbatch_reads_them():
    words = sbatch_lines(SCRIPT)
    assert words[0] == "--job-name=parsl.tasks.block-0.17" and words[-1] == "--cpus-per-task=2"
    assert "--mem=4g" not in words and "--exclusive" in words and "#" not in " ".join(words)


def test_salloc_gets_every_option_but_the_outputs_export_all_and_quiet():
    options, outputs = salloc_words(SCRIPT, "/runs/r/submit_scripts/parsl.tasks.block-0.17")
    assert options == ["--job-name=parsl.tasks.block-0.17", "--nodes=2", "--time=15", "--ntasks-per-node=1",
                       "--partition=debug", "--array=1-3", "--exclusive", "--chdir=/work", "--cpus-per-task=2",
                       "--kill-command=TERM", "--comment=/runs/r/submit_scripts/parsl.tasks.block-0.17"]
    assert refused(options, "/runs/r/submit_scripts/parsl.tasks.block-0.17") == ["--array=1-3"]
    assert outputs == {"stdout": "/other dir/x.out", "stderr": "/runs/r/submit_scripts/parsl.tasks.block-0.17.stderr"}


def test_without_output_lines_the_script_output_goes_beside_it():
    options, outputs = salloc_words("#!/bin/bash\n#SBATCH --nodes=1\nsrun x\n", "/s/job")
    assert options == ["--nodes=1", "--kill-command=TERM", "--comment=/s/job"] and outputs == {"stdout": "/s/job.stdout", "stderr": "/s/job.stderr"}
    assert salloc_words("#!/bin/bash\n#SBATCH -o /s/both.log\n", "/s/job")[1] == {"stdout": "/s/both.log",
                                                                                 "stderr": "/s/both.log"}


def test_the_job_id_is_read_whether_granted_or_pending():
    assert GRANTED.search("salloc: Granted job allocation 4711\n").group(1) == "4711"
    assert GRANTED.search("salloc: Pending job allocation 12\nsalloc: job 12 queued and waiting").group(1) == "12"
    assert GRANTED.search("salloc: error: invalid partition specified: gpu") is None


def test_a_kill_command_or_comment_of_the_users_own_is_kept():
    options = salloc_words("#!/bin/bash\n#SBATCH --comment=mine -K\n", "/s/job")[0]
    assert options == ["--comment=mine", "-K"]


def test_what_salloc_would_refuse_is_named():
    assert refused(["--export=NONE", "--nodes=1", "-N", "2", "--signal=B:USR1@60", "--signal=USR1@60", "--wrap=x",
                    "--requeue", "--signal", "B:USR2@30", "--comment=/s/job"], "/s/job") == [
        "--export=NONE", "--signal=B:USR1@60", "--wrap=x", "--requeue", "--signal B:USR2@30"]
    assert refused(salloc_words("#!/bin/bash\n#SBATCH --comment=mine\n", "/s/job")[0], "/s/job") == ["--comment=mine"]


def test_sbatch_input_variables_become_sallocs_unless_set_or_sbatch_only():
    env = salloc_env({"SBATCH_ACCOUNT": "p1", "SBATCH_PARTITION": "gpu", "SALLOC_PARTITION": "cpu", "PATH": "/b",
                      "SBATCH_SIGNAL": "B:USR1@60", "SBATCH_EXPORT": "NONE"})
    assert (env["SALLOC_ACCOUNT"], env["SALLOC_PARTITION"], env["PATH"]) == ("p1", "cpu", "/b")
    assert "SALLOC_SIGNAL" not in env and "SALLOC_EXPORT" not in env


@pytest.mark.parametrize("option, said", [
    ("--export=NONE", "slurm.scheduler_options: salloc does not take --export=NONE (slurm.start: salloc runs the "
                      "block's script on this host, with this environment); leave it out, or start the blocks by "
                      "sbatch (slurm.start: sbatch)"),
    ("--comment=mine", "slurm.scheduler_options: --comment=mine: slurm.start: salloc sets each block's --comment "
                       "itself (a resume on another host finds the blocks by it); leave --comment out, or start the "
                       "blocks by sbatch (slurm.start: sbatch)")])
def test_the_site_check_names_the_option_salloc_cannot_have(tmp_path, option, said):
    from spibatch.backends import load_site, provider_for
    from spibatch.errors import InputError

    site = tmp_path / "site.yaml"
    site.write_text("name: s\nprovider: slurm\nworkers: 2\nemc_mode: hpc\nslurm: {partition: debug, start: salloc, "
                    f"scheduler_options: '#SBATCH {option}'}}\n")
    with pytest.raises(InputError) as raised:
        provider_for(load_site(site))._salloc_options(tmp_path / "run")
    assert str(raised.value) == f"{site}: {said}"
