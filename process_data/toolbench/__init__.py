"""process_data/toolbench."""
