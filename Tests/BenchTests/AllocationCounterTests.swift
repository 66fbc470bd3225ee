import Dispatch
import Glibc
import Testing
@testable import dmem_bench

/// The allocation counter around threads that exit while it counts.
@Suite struct AllocationCounterTests {
    /// Threads that allocate and exit inside a counting window, each allocating again in the
    /// destructor of a key created after the interposer's (as the Swift runtime's and
    /// Foundation's thread teardown may), leave the heap intact and are counted whole.
    /// malloc-interposer 1.6.1 freed an exiting thread's counter block in its key's
    /// destructor and kept counting into it: those late allocations wrote into freed memory
    /// (glibc aborted the process, "unaligned tcache chunk detected") and went uncounted.
    @Test(.enabled(if: AllocationCounter.isAvailable))
    func threadsExitingWhileCountingAreCountedAndCorruptNothing() throws {
        var late = pthread_key_t()
        #expect(pthread_key_create(&late, { _ in
            // A counted allocation after the interposer's key destructor.
            UnsafeMutableRawPointer.allocate(byteCount: 40, alignment: 8).deallocate()
        }) == 0)
        defer { pthread_key_delete(late) }
        let threads = 64
        let (_, counted) = AllocationCounter.count {
            let exited = DispatchSemaphore(value: 0)
            for _ in 0..<threads {
                var thread = pthread_t()
                let box = Unmanaged.passRetained(ThreadBody(key: late, exited: exited)).toOpaque()
                #expect(pthread_create(&thread, nil, { raw in
                    let body = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
                    UnsafeMutableRawPointer.allocate(byteCount: 40, alignment: 8).deallocate()
                    pthread_setspecific(body.key, UnsafeMutableRawPointer(bitPattern: 1))
                    return nil
                }, box) == 0)
                #expect(pthread_join(thread, nil) == 0)
                exited.signal()
            }
            for _ in 0..<threads { exited.wait() }
        }
        let n = try #require(counted)
        #expect(n >= 2 * threads, "the allocations in the late destructors are counted too")
        // The heap is still sound: allocate and free a spread of sizes.
        for size in stride(from: 16, through: 4096, by: 48) {
            UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8).deallocate()
        }
    }

    /// When another thread took the index back first (glibc gives the lowest free one, so
    /// the first key created lands above it), the workaround gives up at once: it used to
    /// go on creating keys until the process had none left (1024), so that any other
    /// thread's `pthread_key_create` meanwhile failed.
    @Test func anIndexTakenByAnotherKeyIsGivenUpAtOnce() {
        var taken = pthread_key_t()
        #expect(pthread_key_create(&taken, nil) == 0)
        defer { pthread_key_delete(taken) }
        var created = 0
        let got = AllocationCounter.reclaimKeyIndex(taken) { key in
            created += 1
            return pthread_key_create(&key, nil)
        }
        #expect(!got)
        #expect(created <= 4, "keys created looking for an index that is taken: \(created)")
        // Every key it made was given back: one can still be created.
        var after = pthread_key_t()
        #expect(pthread_key_create(&after, nil) == 0)
        pthread_key_delete(after)
    }

    final class ThreadBody: @unchecked Sendable {
        let key: pthread_key_t
        let exited: DispatchSemaphore
        init(key: pthread_key_t, exited: DispatchSemaphore) {
            self.key = key
            self.exited = exited
        }
    }
}
