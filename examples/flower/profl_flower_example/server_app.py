"""The ServerApp: the suite's method as a memory-aware Flower strategy, until it is finished."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from profl_flower import MethodStrategy
from profl_flower_example.task import data, fleet, memory_table, method, model, settings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the method, its memory table and the fleet; run until the method is finished."""
    config = settings(context)
    run_method = method(config)
    batch_size = int(config["batch-size"])
    strategy = MethodStrategy(run_method, fleet(batch_size), memory_table(run_method, batch_size),
                              model(), seed=int(config["seed"]))
    result = strategy.start(grid, evaluate_fn=strategy.evaluator(data().test))
    rounds = sorted(result.evaluate_metrics_serverapp)
    last = result.evaluate_metrics_serverapp[rounds[-1]] if rounds else {}
    drops = sum(len(log.dropped) for log in strategy.logs)
    print(f"profl-flower-example: {run_method.name} finished after {len(strategy.logs)} rounds, "
          f"accuracy {last.get('accuracy')}, {drops} drop(s)", flush=True)
