"""The ClientApp: the suite's client step, refusing what does not fit the node's budget."""

from profl_flower import make_client_app
from profl_flower_example.task import node

app = make_client_app(node)
