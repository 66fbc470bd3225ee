import Glibc

/// Marks a thread while it runs fence callbacks (the callback context of `dma_fence_signal()`):
/// code there must not wait for completions, since completing them needs this very thread
/// (a reaper, a worker, a link-model or fault-injector delivery thread).
///
/// `DMAEngine.shutdown()` (and so the engine's `deinit`, when a callback drops the last
/// reference) reads it to drain on another thread instead of deadlocking.
///
/// Threads: each thread sees and sets only its own mark.
enum FenceCallbackContext {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Whether the calling thread is running fence callbacks.
    static var isActive: Bool { pthread_getspecific(key) != nil }

    /// Marks the calling thread; returns the previous mark for `leave` (callbacks may nest).
    static func enter() -> Bool {
        let was = isActive
        if !was { pthread_setspecific(key, UnsafeRawPointer(bitPattern: 1)) }
        return was
    }

    /// Restores the mark `enter` returned.
    static func leave(_ previous: Bool) {
        if !previous { pthread_setspecific(key, nil) }
    }
}
