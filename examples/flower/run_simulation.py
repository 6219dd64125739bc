"""The example app in Flower's simulation from Python (no SuperLink): 4 nodes on a local Ray.

    FLWR_TELEMETRY_ENABLED=0 python run_simulation.py
"""

from flwr.simulation import run_simulation
from profl_flower_example.client_app import app as client_app
from profl_flower_example.server_app import app as server_app
from profl_flower_example.task import NODES

if __name__ == "__main__":
    run_simulation(server_app, client_app, num_supernodes=NODES, backend_config={
        "init_args": {"num_cpus": 2, "logging_level": "ERROR", "log_to_driver": False},
        "client_resources": {"num_cpus": 1}})
