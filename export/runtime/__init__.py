"""The device runtime: what runs on a Jetson, a Pi or a phone with onnxruntime and numpy alone.

Bench, generation bench, gate, verify, the manifest and archive readers, profiles, inputs and
the host description. No module here imports torch, transformers, optimum or
sentence-transformers, at module level or inside a function; a test checks each one.
"""

# The profile a command uses when none is named: this machine, whatever it is. Here, so that the
# command line can name it without loading the profile reader.
DEFAULT_PROFILE = "host"
