"""What a microsecond-long AdK trajectory (the EGNO paper's protein data) would cost to make here with OpenMM: the
solvated system's size, and (``--steps`` > 0) the measured speed of a short run on the CPU platform, extrapolated
(the trajectory itself is not made).

    python -m benchmarks.openmm_adk_estimate [--steps 100] [--threads 2] [--output estimate.json]

``--steps 0`` builds the system only (half a minute); a measured rate needs minutes to tens of minutes on two
cores (the minimisation of a 50k-atom system dominates).

The system: the AdK structure MDAnalysisTests ships (adk_open.pdb, 3341 atoms, the protein of the paper's
trajectory), CHARMM36 with its TIP3P water (the force field family of the paper's trajectory), a cubic box with 1 nm
of water around the protein and 0.15 M NaCl, PME with a 1 nm cutoff, bonds to hydrogen constrained, a 2 fs Langevin
(middle) integrator at 300 K. After a short energy minimisation and untimed warm-up steps, ``--steps`` steps are
timed. The estimate scales the measured rate to the paper's span (1.0 us, 4187 frames 240 ps apart): days =
steps / rate / 86400. Needs ``pip install openmm`` (not a dependency of the package).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

from egno_fast.data.io import atomic_path

SPAN_NS = 1004.64  # the paper's trajectory: 4187 frames, 240 ps apart (MDAnalysisData adk_equilibrium)
FRAMES = 4187
STEP_FS = 2.0


def measure(steps: int, threads: int) -> dict:
    import openmm
    import openmm.app as app
    import openmm.unit as unit
    from MDAnalysisTests.datafiles import PDB_small

    pdb = app.PDBFile(PDB_small)
    forcefield = app.ForceField("charmm36.xml", "charmm36/water.xml")
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addSolvent(forcefield, padding=1.0 * unit.nanometer, ionicStrength=0.15 * unit.molar)
    box = modeller.topology.getPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    size = dict(openmm=openmm.__version__, atoms=modeller.topology.getNumAtoms(), box_nm=box, threads=threads)
    if steps == 0:
        return size
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.PME,
                                     nonbondedCutoff=1.0 * unit.nanometer, constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, STEP_FS * unit.femtoseconds)
    integrator.setRandomNumberSeed(1)
    cpu = openmm.Platform.getPlatformByName("CPU")
    simulation = app.Simulation(modeller.topology, system, integrator, cpu, {"Threads": str(threads)})
    simulation.context.setPositions(modeller.positions)
    simulation.minimizeEnergy(maxIterations=200)
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    simulation.step(20)  # warm-up
    begin = time.perf_counter()
    simulation.step(steps)
    seconds = time.perf_counter() - begin
    return dict(size, steps=steps, seconds=seconds, steps_per_s=steps / seconds,
                ns_per_day=steps / seconds * STEP_FS * 1e-6 * 86400)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", help="write the measurement and the estimate as JSON here")
    args = parser.parse_args(argv)
    point = measure(args.steps, args.threads)
    total_steps = SPAN_NS * 1e6 / STEP_FS
    point.update(machine=platform.processor() or platform.machine(), span_ns=SPAN_NS, frames=FRAMES,
                 steps_for_span=total_steps)
    print(f"solvated AdK: {point['atoms']} atoms in a {point['box_nm']:.2f} nm box; {SPAN_NS:.0f} ns = "
          f"{total_steps:.3g} steps of {STEP_FS} fs")
    if args.steps:
        point["days_for_span"] = total_steps / point["steps_per_s"] / 86400
        print(f"{point['steps_per_s']:.2f} steps/s with {args.threads} threads ({point['ns_per_day']:.3f} ns/day): "
              f"{point['days_for_span']:.0f} days for the span")
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps(point, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
