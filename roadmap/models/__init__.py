"""The networks of the roadmap: layers, the network an ArchSpec describes, its complexity, interop, named sizes.

Nothing here knows of training, data or tracking.
"""
