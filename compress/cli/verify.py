from compress.cli import COMMANDS
from compress.cli.not_yet import not_implemented

verify = not_implemented("verify", COMMANDS["verify"][1])
