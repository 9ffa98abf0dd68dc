"""A real one-node SLURM cluster for the tests: Debian's munge and slurm-wlm, started as root.

``make system-deps`` installs the packages; the daemons run in the foreground from a
temporary directory (their own munge key, state, spool and ports), so nothing of the
machine's own configuration is used or changed.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")


def unavailable() -> str | None:
    """Why a SLURM cluster cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "the SLURM tests start munged, slurmctld and slurmd, which needs root"
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return (
            f"the SLURM tests need Debian's slurm-wlm and munge ({', '.join(missing)} missing): "
            "run `make system-deps` as root"
        )
    return None


@dataclass(frozen=True)
class TaskState:
    """One job (or array task) as ``scontrol show job`` reports it."""

    job_id: str
    state: str
    exit_code: str


@dataclass
class SlurmCluster:
    root: Path
    node: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            list(args), check=False, env=env or self.env, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def sbatch(
        self, script: Path, *options: str, env: dict[str, str], args: Sequence[str] = ()
    ) -> str:
        """Submit ``script``; returns the job id (the array's id for an array)."""
        return self.run("sbatch", "--parsable", *options, str(script), *args, env=env).strip()

    def active(self, job_id: str) -> bool:
        return bool(self.run("squeue", "-h", "-j", job_id, "-o", "%i").strip())

    def tasks(self, job_id: str) -> list[TaskState]:
        """Every task of ``job_id`` (kept by slurmctld for MinJobAge after it ends)."""
        out = self.run("scontrol", "-o", "show", "job", job_id)
        states = []
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            states.append(TaskState(fields["JobId"], fields["JobState"], fields["ExitCode"]))
        return states

    def wait_idle(self, within: float = 30) -> None:
        deadline = time.monotonic() + within
        state = ""
        while time.monotonic() < deadline:
            self._check_daemons()
            try:
                state = self.run("sinfo", "-h", "-N", "-o", "%T").strip()
            except RuntimeError as exc:
                state = str(exc)
            if state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the node is not idle after {within}s ({state}):\n{self.logs()}")

    def wait_gone(self, job_id: str, within: float) -> None:
        """Until no task of ``job_id`` is pending, running or completing."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self._check_daemons()
            if not self.active(job_id):
                return
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still in the queue after {within}s")

    def _check_daemons(self) -> None:
        for proc in self.processes:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        # Jobs first: their steps (servers, workers) outlive slurmd otherwise, and a server left
        # on its port would answer the next cluster's job in its place.
        try:
            self.run("scancel", "--full", "--quiet", f"--user={os.getuid()}")
            deadline = time.monotonic() + 60
            while self.run("squeue", "-h", "-o", "%i").strip() and time.monotonic() < deadline:
                time.sleep(0.2)
        except RuntimeError:
            pass  # the controller is gone already: nothing left to cancel through it
        # slurmd next (it would re-register), then the controller, then munge.
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def start(root: Path) -> SlurmCluster:
    """munged, slurmctld and slurmd in the foreground, configured for this machine's one node."""
    node, cpus, memory = _this_node()
    munge = root / "munge"
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    munge.chmod(0o711)  # munged insists its socket's directory is reachable, not writable
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    socket = munge / "munge.sock"
    (root / "slurm.conf").write_text(
        _SLURM_CONF.format(
            root=root,
            socket=socket,
            node=node,
            cpus=cpus,
            memory=memory,
            ctld_port=free_port(),
            slurmd_port=free_port(),
            first_job_id=next(_FIRST_JOB_IDS),
        )
    )
    cluster = SlurmCluster(root, node)
    conf = str(root / "slurm.conf")
    commands = [
        [
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={socket}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={root / 'munged.log'}",
            f"--seed-file={munge / 'seed'}",
        ],
        ["slurmctld", "-D", "-i", "-f", conf],
        ["slurmd", "-D", "-N", node, "-f", conf],
    ]
    try:
        for command in commands:
            log = (root / f"{command[0]}.out").open("wb")
            cluster.processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=cluster.env)
            )
            if command[0] == "munged":
                _wait_for_path(socket, cluster)
        cluster.wait_idle()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_path(path: Path, cluster: SlurmCluster, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        cluster._check_daemons()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear:\n{cluster.logs()}")
        time.sleep(0.05)


def _this_node() -> tuple[str, int, int]:
    """This machine as slurmd sees it (name, CPUs, memory in MiB): a node configured larger
    than the machine would be drained as invalid."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    return fields["NodeName"], int(fields["CPUs"]), int(fields["RealMemory"])


# No cgroups here: processes are tracked by parentage (proctrack/linuxproc) and CPUs are the
# only consumable (CR_CPU), so two one-CPU array tasks run side by side on a two-core machine.
# Each cluster of a session numbers its jobs from its own block: deploy/slurm derives a task's
# ports from its job id, and a server of an earlier test's job may still be going away on them.
_FIRST_JOB_IDS = itertools.count(1 + 20 * random.randrange(50), 20)

_SLURM_CONF = """\
ClusterName=embedder-test
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=20
MinJobAge=600
FirstJobId={first_job_id}
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
