// DMAEngine: the copy engine (regions, channels, descriptors, fences, coalescing, backends).
