"""quantserve's core: what quantize/, serving/ and loadtest/ share (config, manifest, prices, names, the CLI).

Nothing here imports those parts, except `quantserve.cli`, the top of the stack (see `.importlinter`).
"""
