import ArgumentParser
import Foundation

/// `dmem-bench torture`: the reliability run — many threads, every kind of access and
/// migration, injected copy faults — judged by a shadow model of every page.
struct TortureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "torture",
        abstract: "Stress the whole model with concurrent accesses, migrations, forks and injected copy faults; verify every byte.",
        discussion: """
            Each thread owns a process whose pages have an expected content (a shadow model): it \
            reads and writes them by CPU and GPU, migrates them to VRAM and back, forks, unmaps and \
            remaps, drops them with MADV_DONTNEED, evicts all VRAM and suspends the device, while the \
            copy engine fails, shortens and delays descriptors (--inject-rate, split evenly) and VRAM \
            is too small for everyone. Each operation is followed by a read-back of what it touched; \
            at the end every page is read back, the model's invariants are checked, and teardown must \
            return every page. Checked mode is on: protocol_violations counts broken driver rules.
            The run passes with 0 mismatches, leaks, protocol and invariant violations, and unexpected \
            errors (exit status 1 otherwise). The same --seed repeats each thread's operations; with \
            more than one thread the interleaving (and which copy meets which fault) varies.
            """
    )

    @Option(parsing: .unconditional, help: "Seconds of random operations (the final check and teardown come after).", transform: NumberArgument.double) var seconds = 30.0
    @Option(parsing: .unconditional, help: "Worker threads (each its own process).", transform: NumberArgument.int) var threads = 4
    @Option(parsing: .unconditional, help: "Seed of the operations and of the fault injection.", transform: NumberArgument.uint64) var seed: UInt64 = 1
    @Option(parsing: .unconditional, help: "Probability per copy descriptor of an injected failure, short copy or delay (0 turns injection off).", transform: NumberArgument.double)
    var injectRate = 0.01
    @Option(parsing: .unconditional, help: "Pages each thread owns.", transform: NumberArgument.int) var pagesPerThread = 1024
    @Option(parsing: .unconditional, help: "VRAM bytes (a multiple of 2M; keep it below threads × pages for exhaustion). (default: 4M)", transform: ByteCount.argument) var vram = ByteCount(4 << 20)
    @Option(parsing: .unconditional, help: "Minimum residency of a page in VRAM in ms (Xe's anti-thrash timeslice; 0: off): CPU faults and eviction under pressure wait for young pages.", transform: NumberArgument.double)
    var residency = 0.0
    @Option(help: ArgumentHelp("Put VRAM in unnamed files in this directory instead of memfds.", valueName: "dir"))
    var vramDir: String?
    @Flag(help: "Register the emulated RAM as io_uring fixed buffers (pinned).") var fixedBuffers = false
    @Option(help: "How faults copy: cpu (the device's default: small fault windows on the faulting thread) or engine (every fault through the copy engine, as nouveau).")
    var faultCopy = "cpu"
    @Option(help: "Copy backend under the fault injector: iouring, memcpy or mapped (2 worker threads through the VRAM mapping).")
    var backend = "iouring"
    @Flag(help: "Print exactly one JSON object on stdout instead of a table (no file name: redirect it, or use `dmem-bench run … --json FILE`).") var json = false

    var options: TortureOptions {
        var o = TortureOptions()
        o.seconds = seconds
        o.threads = threads
        o.seed = seed
        o.injectRate = injectRate
        o.pagesPerThread = pagesPerThread
        o.vramBytes = vram.bytes
        // Out of range (or NaN) becomes -1 s, which `problem` refuses: converting a huge
        // value to an integer would trap.
        o.minimumResidency = (0...1e6).contains(residency) ? .nanoseconds(Int64(residency * 1e6)) : .seconds(-1)
        o.vramDirectory = vramDir
        o.fixedBuffers = fixedBuffers
        o.faultCopy = TortureOptions.FaultCopy(rawValue: faultCopy) ?? .cpu
        o.copyBackend = MigrateOptions.Backend(rawValue: backend) ?? .iouring
        return o
    }

    func validate() throws {
        if let problem = options.problem {
            throw ValidationError(FlagWording.reword(problem, keys: ["seconds", "threads", "inject-rate", "pages-per-thread",
                                                                     "vram", "residency", "vram-dir"]))
        }
        guard TortureOptions.FaultCopy(rawValue: faultCopy) != nil else { throw ValidationError("fault-copy must be cpu or engine") }
        guard MigrateOptions.Backend(rawValue: backend) != nil else {
            throw ValidationError("backend must be one of: \(MigrateOptions.Backend.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        // A TortureFailure (e.g. not enough memory) is printed as `Error: …`, exit status 1.
        let record = try TortureRun.run(options) { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
        var report = ScenarioReport(scenario: "torture")
        report.runs = [record]
        if json {
            print(report.json)
        } else {
            print(report.table(columns: [
                "seconds", "threads", "operations", "pages_migrated", "faults", "injected_failures", "sigbus",
                "bytes_verified", "mismatches", "leaks", "protocol_violations", "invariant_violations", "passed",
            ]))
            if case .string(let findings)? = record["findings"] { print("\nfindings:\n" + findings) }
        }
        if record["passed"] != .bool(true) { throw ExitCode.failure }
    }
}
