from compress.cli import COMMANDS
from compress.cli.not_yet import not_implemented

distill = not_implemented("distill", COMMANDS["distill"][1])
