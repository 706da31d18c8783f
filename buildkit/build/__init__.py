"""The build: payload kinds (kinds.py, one module each, below the recipe layer) and the build stage
(stage.py) that runs one, gates what it made and publishes it."""
