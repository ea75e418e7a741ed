"""The index audit (`mmrag check`) and its repair."""
