"""The one sliding-window engine: windows and their weights, the mode decision, the tiled
loop every prediction runs through, the output head, and the memory model."""
