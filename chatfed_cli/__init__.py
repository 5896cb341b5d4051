"""The operator command-line interface: `chatfed --help`."""
