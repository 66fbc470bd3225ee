// dmem-bench: the batched-copy / migration benchmark.
print("dmem-bench: nothing here yet")
