from compress.cli import COMMANDS
from compress.cli.not_yet import not_implemented

quantize = not_implemented("quantize", COMMANDS["quantize"][1])
