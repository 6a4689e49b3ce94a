from compress.cli import COMMANDS
from compress.cli.not_yet import not_implemented

package = not_implemented("package", COMMANDS["package"][1])
