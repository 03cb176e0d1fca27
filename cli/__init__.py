"""The `ocellus` command-line dispatcher."""
