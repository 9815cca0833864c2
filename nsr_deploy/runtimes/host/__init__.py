"""What runs on the host around any engine: tiling, image files, restore loops, Ray pools. No torch."""
