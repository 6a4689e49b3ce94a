from compress.cli import COMMANDS
from compress.cli.not_yet import not_implemented

export = not_implemented("export", COMMANDS["export"][1])
