"""Applications that the tests' YAML names by import string."""
