"""process_data."""
