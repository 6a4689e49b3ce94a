from compress.cli import COMMANDS
from compress.cli.not_yet import not_implemented

prune = not_implemented("prune", COMMANDS["prune"][1])
