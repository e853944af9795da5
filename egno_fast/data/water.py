"""A periodic box of liquid water simulated with OpenMM: a large system made by a real MD engine.

``egno-fast data --config water`` builds a cubic box of TIP3P-FB water (``data.water_box_nm`` nm on a side: 6 nm
holds 21,384 atoms) with OpenMM's Modeller, and simulates it on OpenMM's CPU platform: PME electrostatics with a
1 nm cutoff (less in a box too small for it), rigid water, a 2 fs Langevin (middle) integrator at 300 K with a
friction of 1/ps. The tiled box relaxes by 200 Langevin steps of 0.25 fs from rest, then, with velocities drawn at
300 K, equilibrates for ``data.water_equilibration_steps`` steps; it then records ``data.water_frames`` frames
``data.water_steps_per_frame`` steps apart, the positions wrapped into the box as the engine keeps them. Seeded by
``data.generator_seed`` (the integrator's noise and the initial velocities): a seed gives the same trajectory, to
the CPU platform's rounding (OpenMM's energy minimiser is not used: its result varies from run to run).

Resumable: the frames are recorded in chunks; each chunk's positions and an OpenMM checkpoint of the simulation at
its end (``Context.createCheckpoint``, what OpenMM's CheckpointReporter writes) go atomically into one file of the
partial folder, so an interrupted generation continues from the last complete chunk when run again (on the same
machine: OpenMM checkpoints are specific to the platform; one it cannot read is reported with the folder to delete).
When every chunk is done, ``water.dcd`` and ``water.pdb`` (the topology, with the positions at the end of the
equilibration, ``data.water_steps_per_frame`` steps before the first frame) are written and the folder is renamed into place: ``<data folder>/water/<key>/`` exists complete or not at
all. The samples are then those of the trajectory data set (:mod:`egno_fast.data.trajectory`): the same loader a
user's own DCD goes through.

Needs ``pip install openmm`` (the ``water`` extra) and MDAnalysis (the ``trajectory`` extra).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from .io import MissingExtraError, atomic_path, atomic_savez, generation_lock, load_npz

logger = logging.getLogger("egno_fast")
WATER_VERSION = 2  # 2: relaxation by short steps (1: OpenMM's minimiser, not reproducible)
TIMESTEP_FS = 2.0
TEMPERATURE_K = 300.0
FRICTION_PER_PS = 1.0
CUTOFF_NM = 1.0  # PME real-space cutoff; a box narrower than 2 x this uses 0.45 of its side
# Before equilibration, the box as Modeller tiles it relaxes by short Langevin steps from rest (its close contacts
# at the tiles' seams), not by OpenMM's energy minimiser, whose result differs from run to run: seeded runs then
# give the same trajectory.
RELAX_STEPS = 200
RELAX_TIMESTEP_FS = 0.25
FRAMES_PER_CHUNK = 50


@dataclass(frozen=True)
class WaterParams:
    """The simulation: box side (nm), recorded frames, steps between frames, equilibration steps, seed."""

    box_nm: float = 6.0
    frames: int = 600
    steps_per_frame: int = 5
    equilibration_steps: int = 1000
    seed: int = 43

    @property
    def frame_interval_ps(self) -> float:
        return self.steps_per_frame * TIMESTEP_FS / 1000.0

    def key(self) -> str:
        described = dict(dataclasses.asdict(self), version=WATER_VERSION, timestep_fs=TIMESTEP_FS,
                         temperature_k=TEMPERATURE_K, friction=FRICTION_PER_PS, cutoff_nm=CUTOFF_NM)
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def _openmm():
    try:
        import openmm
        import openmm.app as app
        import openmm.unit as unit
    except ImportError as error:
        raise MissingExtraError("the water data set is simulated with OpenMM: pip install 'egno_fast[water]' (in a "
                                "clone: pip install -e '.[water]')") from error
    return openmm, app, unit


def _simulation(params: WaterParams, threads: int):
    """The OpenMM simulation of the box (positions set, not minimised) and its topology."""
    openmm, app, unit = _openmm()
    forcefield = app.ForceField("amber14/tip3pfb.xml")
    modeller = app.Modeller(app.Topology(), [])
    side = params.box_nm
    modeller.addSolvent(forcefield, model="tip3p", boxSize=openmm.Vec3(side, side, side) * unit.nanometer)
    cutoff = min(CUTOFF_NM, 0.45 * params.box_nm)
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.PME,
                                     nonbondedCutoff=cutoff * unit.nanometer, constraints=app.HBonds,
                                     rigidWater=True)
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE_K * unit.kelvin, FRICTION_PER_PS / unit.picosecond,
                                                 TIMESTEP_FS * unit.femtoseconds)
    integrator.setRandomNumberSeed(params.seed)
    platform = openmm.Platform.getPlatformByName("CPU")
    properties = {"Threads": str(threads)} if threads else {}
    simulation = app.Simulation(modeller.topology, system, integrator, platform, properties)
    simulation.context.setPositions(modeller.positions)
    return simulation, modeller


def _box_angstrom(state) -> np.ndarray:
    _, _, unit = _openmm()
    return np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom), dtype=np.float64)


def _positions_angstrom(state) -> np.ndarray:
    _, _, unit = _openmm()
    return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.angstrom), dtype=np.float32)


def water_files(folder: Path) -> Tuple[Path, Path]:
    """The trajectory (DCD) and topology (PDB) of a generated water folder."""
    return folder / "water.dcd", folder / "water.pdb"


def generate_water(folder: Path, params: WaterParams, threads: int = 0,
                   report: Callable[[str], None] = logger.warning) -> None:
    """Simulate ``params`` into ``folder`` (which must not exist), resuming a partial generation found beside it
    (``.<name>.partial``). ``threads``: OpenMM CPU threads (0: OpenMM's default, all cores)."""
    openmm, app, unit = _openmm()
    partial = folder.with_name(f".{folder.name}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    if (partial / "meta.json").is_file():  # interrupted after the last file was written
        os.replace(partial, folder)
        return
    simulation, modeller = _simulation(params, threads)
    chunks = -(-params.frames // FRAMES_PER_CHUNK)
    done = 0  # chunks 0 .. done - 1 complete, each with the checkpoint of the simulation at its end
    while done < chunks and (partial / f"chunk_{done:04d}.npz").is_file():
        done += 1
    if done and (partial / "topology.pdb").is_file():
        state = load_npz(partial / f"chunk_{done - 1:04d}.npz", ["checkpoint"])["checkpoint"]
        try:
            simulation.context.loadCheckpoint(state.tobytes())
        except Exception as error:  # another platform or OpenMM version wrote it
            raise ValueError(f"cannot resume the water simulation in {partial} ({type(error).__name__}: {error}); "
                             f"delete that folder to start it again") from error
        report(f"water: resuming after {min(done * FRAMES_PER_CHUNK, params.frames)} of {params.frames} frames "
               f"({partial})")
    else:
        done = 0
        report(f"water: {modeller.topology.getNumAtoms()} atoms in a {params.box_nm:g} nm box; relaxing "
               f"({RELAX_STEPS} steps of {RELAX_TIMESTEP_FS} fs) and equilibrating ({params.equilibration_steps} "
               f"steps)")
        _run(simulation, RELAX_STEPS, RELAX_TIMESTEP_FS)
        simulation.context.setVelocitiesToTemperature(TEMPERATURE_K * unit.kelvin, params.seed)
        _run(simulation, params.equilibration_steps)
        with atomic_path(partial / "topology.pdb") as tmp, open(tmp, "w") as handle:
            state = simulation.context.getState(getPositions=True, enforcePeriodicBox=True)
            app.PDBFile.writeFile(simulation.topology, state.getPositions(), handle)
    begin = time.perf_counter()
    for chunk in range(done, chunks):
        count = min(FRAMES_PER_CHUNK, params.frames - chunk * FRAMES_PER_CHUNK)
        positions, boxes = [], []
        for _ in range(count):
            _run(simulation, params.steps_per_frame)
            state = simulation.context.getState(getPositions=True, enforcePeriodicBox=True)
            positions.append(_positions_angstrom(state))
            boxes.append(_box_angstrom(state))
        # the frames and the simulation's state at their end in one file, written atomically: a chunk is complete
        # with its checkpoint or absent
        checkpoint = np.frombuffer(simulation.context.createCheckpoint(), dtype=np.uint8)
        atomic_savez(partial / f"chunk_{chunk:04d}.npz", positions=np.stack(positions), boxes=np.stack(boxes),
                     checkpoint=checkpoint)
        frames_done = chunk * FRAMES_PER_CHUNK + count
        rate = (frames_done - done * FRAMES_PER_CHUNK) * params.steps_per_frame / (time.perf_counter() - begin)
        report(f"water: {frames_done} / {params.frames} frames ({rate:.1f} steps/s)")
    _write_outputs(partial, params, chunks)
    os.replace(partial, folder)


def _run(simulation, steps: int, timestep_fs: float = TIMESTEP_FS) -> None:
    """``steps`` steps of ``timestep_fs``; OpenMM's errors (a simulation that blew up: NaN coordinates) as a
    ValueError naming them."""
    _, _, unit = _openmm()
    try:
        simulation.integrator.setStepSize(timestep_fs * unit.femtoseconds)
        simulation.step(steps)
    except Exception as error:
        if type(error).__name__ != "OpenMMException":
            raise
        raise ValueError(f"the water simulation failed: {error}") from error


def _write_outputs(partial: Path, params: WaterParams, chunks: int) -> None:
    """water.dcd (every chunk, in order) and water.pdb, then meta.json: the last file written."""
    import MDAnalysis as mda
    from MDAnalysis.lib.mdamath import triclinic_box

    dcd, pdb = water_files(partial)
    shutil.copyfile(partial / "topology.pdb", pdb)
    universe = mda.Universe(str(pdb))
    with atomic_path(dcd) as tmp, mda.Writer(str(tmp), universe.atoms.n_atoms, dt=params.frame_interval_ps) as out:
        for chunk in range(chunks):
            arrays = load_npz(partial / f"chunk_{chunk:04d}.npz", ["positions", "boxes"])
            for positions, box in zip(arrays["positions"], arrays["boxes"]):
                universe.atoms.positions = positions
                universe.dimensions = triclinic_box(*box)
                out.write(universe.atoms)
    meta = dict(dataclasses.asdict(params), version=WATER_VERSION, atoms=int(universe.atoms.n_atoms),
                frame_interval_ps=params.frame_interval_ps, timestep_fs=TIMESTEP_FS, temperature_k=TEMPERATURE_K)
    with atomic_path(partial / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    for stale in list(partial.glob("chunk_*.npz")) + [partial / "topology.pdb"]:
        stale.unlink()


def water_params(config) -> WaterParams:
    """The simulation a :class:`~egno_fast.config.DataConfig` asks for."""
    return WaterParams(box_nm=config.water_box_nm, frames=config.water_frames,
                       steps_per_frame=config.water_steps_per_frame,
                       equilibration_steps=config.water_equilibration_steps, seed=config.generator_seed)


def water_folder(cache_dir: Path, params: WaterParams) -> Path:
    return cache_dir / "water" / params.key()


def load_or_generate_water(cache_dir: Path, params: WaterParams, threads: int = 0,
                           report: Optional[Callable[[str], None]] = None) -> Tuple[Path, Path]:
    """The (DCD, PDB) of ``params``, simulated on first use (one process generates; another waits)."""
    folder = water_folder(cache_dir, params)
    if not (folder / "meta.json").is_file():
        with generation_lock(folder):
            if not (folder / "meta.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)  # a folder without meta.json is incomplete
                generate_water(folder, params, threads, report or logger.warning)
    return water_files(folder)
