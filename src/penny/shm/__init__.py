"""The shared region and what lives in it: its layout (every offset), the
memfd mapping, the task table, the parking words, the data arena and the
function directory.  Everything here works on a `_core.Shared` view of the
region and imports only the ground modules below it."""
