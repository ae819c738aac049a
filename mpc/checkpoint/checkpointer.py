"""``mpc.Checkpointer``: a training loop's checkpoints every K steps, and a resume that every party agrees on.

::

    ck = mpc.Checkpointer(directory, every=K, model=model, optimizer=opt)
    start = ck.resume()          # 0 on a fresh start; when resuming, the step the parties agreed on
    for i in range(start, steps):
        train_step(i)            # the same batches for step i in every run (a deterministic order)
        ck.step(i + 1)           # every K steps: DIR/party<rank>/step-<i+1>.mpc (mpc.save)

Each party keeps its own files in ``DIR/party<rank>/`` (``step-00000040.mpc``,
the newest ``keep`` of them; temporaries left by a killed writer are deleted).
``directory`` defaults to the run's resume directory (``mpc launch --resume
DIR``, ``mpc party --resume DIR``: ``ctx.config.resume_dir``); with neither,
the checkpointer is off (``resume()`` returns 0, ``step()`` does nothing).

``resume()`` (one round of public metadata, then ``mpc.load``'s round):

1. each party lists its complete files and checks each one (format, checksum,
   that it is its own, of this run's shape and protocol, of this model and
   optimizer: ``mpc.checkpoint.collective.check``); a file that fails is
   refused with its name and the reason, not skipped;
2. the parties exchange, for every step they hold, the tag of the save that
   wrote it, their training's lineage, whether they were started to resume,
   and a fresh nonce;
3. starting afresh, every party must be, and hold no checkpoint: the lineage
   of the new training is the hash of the nonces.  Resuming, every party must
   be, and the step is the newest one that every party holds from the same
   save (or the one asked for, ``resume(step=S)``, which every party must ask
   for and hold); else each party refuses, naming every party's steps;
4. every party loads its file of that step (``mpc.load``), deletes its newer
   files (an abandoned continuation: their shares do not fit the other
   parties' any more) and returns the step; later saves keep the lineage.

A party killed in the middle of a save leaves a temporary file and at most one
step the others hold and it does not, so with ``keep >= 2`` the parties
always have a step in common, and a resumed run repeats at most K steps.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..context import PartyContext
from ..errors import CheckpointError, ConfigError, ProtocolError
from ..ops import record
from .checks import check, clean
from .collective import gather, load, new_id, refuse_problems, save
from .entries import context_of, layout, objects_of
from .fileformat import is_temporary, read_file

__all__ = ["Checkpointer", "step_file"]

_STEP_FILE = re.compile(r"^step-(\d{8,})\.mpc$")


def step_file(step: int) -> str:
    """The name of a step's file: ``step-00000040.mpc``."""
    return f"step-{step:08d}.mpc"


def _positive(v: Any, name: str, low: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ConfigError(f"Checkpointer: {name} must be an integer >= {low}, got {v!r}")
    return v


class Checkpointer:
    """Saves ``model``, ``optimizer`` and ``objects`` every ``every`` steps; ``resume()`` restores the agreed step.

    ``directory``: the checkpoint root (this party writes ``directory/party<rank>/``);
    default: the run's ``--resume`` directory; None with no resume directory: off.
    ``resume``: whether ``resume()`` continues a training (default: whether the
    run was started with ``--resume``) or starts a new one.  ``keep`` (>= 2):
    how many of the newest files each party keeps.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        every: int,
        model: Any = None,
        optimizer: Any = None,
        objects: Mapping[str, Any] | None = None,
        keep: int = 3,
        resume: bool | None = None,
        ctx: PartyContext | None = None,
    ) -> None:
        named: dict[str, Any] = {k: v for k, v in (("model", model), ("optimizer", optimizer)) if v is not None}
        for k, v in (objects or {}).items():
            if k in named:
                raise ProtocolError(f"Checkpointer: {k!r} is given twice")
            named[k] = v
        if not named:
            raise ProtocolError("Checkpointer: give what to checkpoint: model=, optimizer= and/or objects={...}")
        self.objects = objects_of(named)
        self.ctx = context_of(self.objects) if ctx is None else ctx
        self.every = _positive(every, "every", 1)
        self.keep = _positive(keep, "keep", 2)
        configured = self.ctx.config.resume_dir
        if directory is not None and configured is not None and Path(directory).resolve() != Path(configured).resolve():
            raise ConfigError(
                f"the checkpoint directory {directory} is not the one party {self.ctx.rank} resumes from "
                f"({configured}): give the same directory, or leave it out (it defaults to the --resume directory)"
            )
        root = directory if directory is not None else configured
        self.directory: Path | None = Path(root).resolve() if root is not None else None
        self.resuming = configured is not None if resume is None else bool(resume)
        if self.resuming and self.directory is None:
            raise ConfigError("Checkpointer(resume=True) needs the directory to resume from")
        self.lineage: str | None = None
        self._started = False

    # ----- where ---------------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Whether this checkpointer writes and resumes (it has a directory)."""
        return self.directory is not None

    @property
    def party_dir(self) -> Path:
        if self.directory is None:
            raise ProtocolError("this Checkpointer is off: it has no directory")
        return self.directory / f"party{self.ctx.rank}"

    def path(self, step: int) -> Path:
        """This party's file of ``step``."""
        return self.party_dir / step_file(step)

    def steps(self) -> list[int]:
        """The steps of this party's complete files (by name; unchecked), oldest first."""
        if not self.enabled or not self.party_dir.is_dir():
            return []
        found = (_STEP_FILE.match(p.name) for p in self.party_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    # ----- resume ----------------------------------------------------------------------------------------------
    def resume(self, step: int | None = None) -> int:
        """Agree with the other parties where to start and restore it; the number of steps already done.

        Collective (every party calls it once, before training).  Starting
        afresh it returns 0; resuming, it restores the newest step that every
        party holds from one save (or ``step``) into the objects and returns it.
        """
        if self._started:
            raise ProtocolError("Checkpointer.resume() is called once, before training")
        self._started = True
        if not self.enabled:
            return 0
        if step is not None:
            _positive(step, "step", 0)
        ctx = self.ctx
        mine: dict[str, Any] = {"resuming": self.resuming, "nonce": os.urandom(16).hex(), "requested": step,
                                "dir": str(self.party_dir), "steps": [], "lineage": None}  # fmt: skip
        try:
            mine.update(self._scan())
        except CheckpointError as exc:
            mine["problem"] = str(exc)
        except OSError as exc:  # an unreadable directory: named to every party like a bad file
            mine["problem"] = f"cannot read {self.party_dir}: {exc.strerror or exc}"
        record(ctx, "checkpoint.resume", "resume()")
        table = gather(ctx, "checkpoint:resume", mine)
        start, lineage = _decide(table, ctx.rank)
        if lineage is None:  # a new training
            self.lineage = new_id([m.get("nonce") for m in table], b"mpc-lineage")
            self.party_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return 0
        load(self.path(start), into=self.objects, step=start, lineage=lineage, ctx=ctx)
        for s in self.steps():
            if s > start:  # written after the step every party holds: an abandoned continuation
                self.path(s).unlink(missing_ok=True)
        self.lineage = lineage
        ctx.log.info(f"checkpoint: party {ctx.rank} resumes from step {start} ({self.path(start)})")
        return start

    def _scan(self) -> dict[str, Any]:
        """This party's checked steps ``[[step, tag], ...]`` and lineage; ``CheckpointError`` for a bad file."""
        out: dict[str, Any] = {"steps": [], "lineage": None}
        d = self.party_dir
        if not d.is_dir():
            return out
        for p in d.iterdir():
            if is_temporary(p.name):
                p.unlink(missing_ok=True)  # a killed writer's leftover: never renamed, never a checkpoint
        live = layout(self.objects)
        lineages, steps = set(), []
        for s in self.steps():
            f = read_file(self.path(s))
            check(self.ctx, f, live, step=s)
            lineages.add(f.header["lineage"])
            steps.append([s, f.header["tag"]])
        if len(lineages) > 1:
            raise CheckpointError(f"{d} holds checkpoints of {len(lineages)} different trainings: keep one training "
                                  "per directory (move the others away)")  # fmt: skip
        if steps and not self.resuming:
            raise CheckpointError(
                f"{d} already holds checkpoints of a training (steps {[s for s, _ in steps]}): continue it with "
                f"--resume {self.directory} (mpc launch or mpc party), or delete them or choose another directory "
                "to start afresh"
            )
        out["steps"], out["lineage"] = steps, (lineages.pop() if lineages else None)
        return out

    # ----- saving ------------------------------------------------------------------------------------------------
    def step(self, done: int) -> Path | None:
        """Call after each training step with the number of steps done: saves when it is a multiple of ``every``."""
        if not self.enabled:
            return None
        if not self._started:
            raise ProtocolError("call Checkpointer.resume() once before training: the parties agree where to start")
        if not isinstance(done, int) or isinstance(done, bool) or done < 0:
            raise ProtocolError(f"Checkpointer.step takes the number of steps done, got {done!r}")
        if done % self.every:
            return None
        return self.save(done)

    def save(self, step: int) -> Path:
        """Save now as ``step`` (collective), then delete this party's files beyond the newest ``keep``."""
        if not self._started:
            raise ProtocolError("call Checkpointer.resume() once before training: the parties agree where to start")
        path = save(self.objects, self.path(step), step=step, lineage=self.lineage, ctx=self.ctx)
        for s in self.steps()[: -self.keep]:
            self.path(s).unlink(missing_ok=True)
        self.ctx.log.info(f"checkpoint: party {self.ctx.rank} wrote step {step} ({path})")
        return path


def _steps_of(m: dict[str, Any], j: int) -> dict[int, str]:
    raw = m.get("steps", [])
    try:
        out = {int(s): str(t) for s, t in raw}
        if not all(isinstance(s, int) and not isinstance(s, bool) for s, _ in raw):
            raise ValueError
    except (TypeError, ValueError):
        raise CheckpointError(f"party {j} sent a malformed list of checkpoint steps") from None
    return out


def _decide(table: list[dict[str, Any]], rank: int) -> tuple[int, str | None]:
    """The step to resume from and its lineage (``(0, None)``: a new training), the same at every party."""
    resuming = [bool(m.get("resuming")) for m in table]
    if len(set(resuming)) > 1:
        which = ", ".join(f"party {j} {'resumes' if r else 'starts afresh'}" for j, r in enumerate(resuming))
        raise CheckpointError(f"the parties do not agree whether to resume ({which}): start every party with "
                              "--resume DIR, or none")  # fmt: skip
    refuse_problems(table, rank)
    n = len(table)
    if not resuming[0]:
        return 0, None
    have = [_steps_of(m, j) for j, m in enumerate(table)]
    where = "; ".join(f"party {j} has {sorted(h) or 'none'} in {clean(table[j].get('dir'), 200)}" for j, h in
                      enumerate(have))  # fmt: skip
    if not any(have):
        raise CheckpointError(f"no party has a checkpoint to resume from ({where}): start without --resume, or "
                              "give the directory the training wrote")  # fmt: skip
    if not all(have):
        raise CheckpointError(
            f"some parties have no checkpoint ({where}): the parties cannot resume from the same step; restore the "
            "missing directories, or start the training afresh (delete every party's checkpoints)"
        )
    lineages = [clean(m.get("lineage"), 40) for m in table]
    if len(set(lineages)) > 1:
        raise CheckpointError(
            "the parties' checkpoints belong to different trainings ("
            + ", ".join(f"party {j}: lineage {x}" for j, x in enumerate(lineages))
            + "): give every party the directory of the same training"
        )
    common = {s: t for s, t in have[0].items() if all(h.get(s) == t for h in have)}
    asked = [m.get("requested") for m in table]
    if len(set(map(str, asked))) > 1:
        raise CheckpointError(f"the parties would resume from different steps: they ask for {clean(asked, 200)} "
                              "(party 0 first); ask every party for the same step")  # fmt: skip
    if asked[0] is not None:
        s = asked[0]
        if not isinstance(s, int) or s not in common:
            lacking = [j for j in range(n) if s not in have[j]]
            why = (
                f"parties {lacking} do not hold it" if lacking else "the parties' files of it come from different saves"
            )
            raise CheckpointError(f"cannot resume from step {s}: {why} ({where})")
        return s, table[rank]["lineage"]
    if not common:
        raise CheckpointError(
            f"the parties hold no step in common, so they would resume from different steps ({where}; files of "
            "the same step written by different saves do not count as common): start the training afresh"
        )
    return max(common), table[rank]["lineage"]
