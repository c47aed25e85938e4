"""How far to trust the simulator: a real run's figures against their prediction, its band and its pace."""

from __future__ import annotations

from pathlib import Path

import click

from ipa.cli import cli, console, err_console


@cli.command()
@click.argument("run", type=click.Path(), required=False)
@click.option("--repredict", is_flag=True,
              help="predict the run's cells again with the simulator as it is now (RUN/reprediction.md)")
@click.option("--at-cell-pace", is_flag=True,
              help="simulate each cell at the pace its own batches ran at, 10 s by 10 s (RUN/at-cell-pace.md): the "
                   "error left once the machine's speed is known")
@click.option("--against", type=click.Path(), default=None, metavar="FIRST",
              help="RUN's real figures against an earlier serving of the same cells (RUN/repeat.md)")
@click.option("--tally", multiple=True, type=click.Path(), metavar="CSV",
              help="several runs' scored tables side by side (repeat for each); writes nothing")
def fidelity(run, repredict, at_cell_pace, against, tally):
    """Score a real run (ipa experiment --runtime ray) against the simulator's prediction of it.

    Each figure against its target (throughput and completed within 10%, p99 latency 25%, energy 15%, PAS 3%,
    SLA violations 5 points), whether the real figure lies in the prediction's band, split by whether the cell's
    pace was predicted within 5%: RUN/prediction.csv and RUN/prediction.md."""
    from ipa.experiment.fidelity.repredict import read_run
    from ipa.experiment.fidelity.repredict import repredict as predict_again
    from ipa.experiment.fidelity.score import repeat, report
    from ipa.experiment.fidelity.score import tally as side_by_side

    if tally:
        if run or repredict or at_cell_pace or against:
            raise click.UsageError("--tally takes scored tables only: give no RUN and no other option with it")
        console.print(side_by_side([Path(p) for p in tally]))
        return
    if run is None:
        raise click.UsageError("give a RUN folder (one with fidelity.csv), or --tally CSV ...")
    run = Path(run)
    if against:
        _, text = repeat(read_run(Path(against)), read_run(run), run / "repeat")
        console.print(text)
        return
    if repredict or at_cell_pace:
        name = "at-cell-pace" if at_cell_pace else "reprediction"
        err_console.print(f"simulating {run}'s cells again{' at their own pace' if at_cell_pace else ''}",
                          highlight=False)
        how = (" at each cell's own measured pace, pooled and each served variant's, its own 10 s and their spread "
               "(not a prediction)" if at_cell_pace else " with the simulator of today")
        console.print(report(predict_again(run, at_cell_pace), run / name, f"simulated again on {run}{how}"))
        return
    console.print(report(read_run(run), run / "prediction", f"predicted before each cell of {run} ran"))
