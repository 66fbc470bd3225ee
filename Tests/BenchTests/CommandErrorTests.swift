import ArgumentParser
import DMAEngine
import Foundation
import Testing
@testable import dmem_bench

/// What a user sees when a command cannot do its job: a usage error only for bad arguments,
/// `Error: …` with exit status 1 for a run that fails, never a trap, never exit 0.
@Suite struct CommandErrorTests {
    /// `torture --residency` takes any Double; a huge one used to trap converting to Int.
    @Test func aHugeTortureResidencyIsRefusedNotATrap() {
        for value in ["1e13", "1e30", "inf", "nan", "1001", "-1"] {
            #expect(parseError(["torture", "--residency=\(value)"]) == "--residency must be in 0...1000 ms", "\(value)")
        }
        #expect(parseError(["torture", "--residency", "1000"]) == nil)
        #expect(parseError(["torture", "--residency", "2.5"]) == nil)
        #expect((try? TortureCommand.parse(["--residency", "2.5"]).options.minimumResidency) == .microseconds(2500))
    }

    /// `migrate`, `thrash`, `race` and `torture` word a bad value by the flag typed, not by
    /// the `run --set` key that the same check serves (`run` keeps the key).
    @Test func rangeErrorsNameTheFlagTyped() {
        #expect(parseError(["migrate", "--total", "3M"]) == "--total 3M must be a positive multiple of 2M")
        #expect(parseError(["migrate", "--fault-around", "4", "--prefetch", "sequential"])
                == "--fault-around and --prefetch sequential both size CPU faults: use one of them")
        #expect(parseError(["thrash", "--rounds", "0"]) == "--rounds must be in 1...100000 (got 0)")
        #expect(parseError(["race", "--hold", "0"]) == "--hold must be in 1...5000 ms")
        #expect(parseError(["torture", "--threads", "65"]) == "--threads must be in 1...64 (got 65)")
        #expect(parseError(["migrate", "--vram-dir", "/nonexistent-dir"])?.hasPrefix("--vram-dir /nonexistent-dir does not exist") == true)
        #expect(parseError(["torture", "--vram-dir", "/nonexistent-dir"])?.hasPrefix("--vram-dir /nonexistent-dir does not exist") == true)
        #expect(FlagWording.reword("fixed buffers are io_uring's", keys: ["total"]) == "fixed buffers are io_uring's")
    }

    /// `help` about a command that does not exist is an error, not the top-level help with
    /// exit status 0 (argument-parser's behaviour); help about real commands is unchanged.
    @Test func helpAboutAnUnknownCommandIsAnError() {
        let names = "suite, run, list, copy, mm, migrate, thrash, torture, race"
        #expect(DmemBench.unknownHelpTopic(["help", "nope"])
                == "no help for 'nope': not a command (commands: \(names); see dmem-bench --help)")
        #expect(DmemBench.unknownHelpTopic(["help", "migrate", "nope"])
                == "no help for 'nope': 'dmem-bench migrate' has no subcommands (see dmem-bench migrate --help)")
        for fine in [["help"], ["help", "migrate"], ["help", "race", "--help"], ["migrate", "help"], ["nope"]] {
            #expect(DmemBench.unknownHelpTopic(fine) == nil, "\(fine)")
        }
    }

    /// `thrash`'s flags are checked under their own names, not the `run thrash` keys
    /// (`--residency` used to be refused as "residency-ms").
    @Test func thrashErrorsNameTheFlags() {
        #expect(parseError(["thrash", "--residency", "20000"]) == "--residency must be in 0...10000 ms (got 20000)")
        #expect(parseError(["thrash", "--gpu-fault", "thrashing", "--thrash-lapse", "0"])
                == "--thrash-lapse must be in 1...600000 ms (got 0)")
        #expect(parseError(["thrash", "--gpu-fault", "thrashing", "--thrash-pin=-1"])
                == "--thrash-pin must be in 0...3600000 ms (got -1)")
        #expect(parseError(["thrash", "--residency", "10000"]) == nil)
    }

    /// `copy --repeats` and `run --repeat` each take the other's spelling as well.
    @Test func repeatAndRepeatsAreOneOption() throws {
        #expect(try CopyCommand.parse(["--repeat", "2"]).repeats == 2)
        #expect(try CopyCommand.parse(["--repeats", "4"]).repeats == 4)
        #expect(parseError(["copy", "--repeat", "0"]) == "--repeats must be in 1...100 (got 0)")
        #expect(parseError(["run", "memcpy", "--repeats", "0"]) == "--repeat must be between 1 and 1000 (got 0)")
        #expect(parseError(["run", "memcpy", "--repeats", "2"]) == nil)
    }

    /// A negative value after a space reads as the value, as after '=': ArgumentParser took
    /// `-1` in `--batch -1` for a flag and said only "Missing value for '--batch <batch>'".
    @Test func aNegativeValueAfterASpaceGetsTheErrorOfTheEqualsForm() {
        let cases: [(arguments: [String], error: String)] = [
            (["migrate", "--batch", "-1"], "--batch must be in 1...4096 (got -1)"),
            (["copy", "--total", "-8M"], "The value '-8M' is invalid for '--total <total>': a size cannot be negative"),
            (["torture", "--residency", "-1"], "--residency must be in 0...1000 ms"),
            (["torture", "--residency", "-inf"], "--residency must be in 0...1000 ms"),
            (["thrash", "--gpu-fault", "thrashing", "--thrash-pin", "-1"], "--thrash-pin must be in 0...3600000 ms (got -1)"),
            (["run", "memcpy", "--repeat", "-2"], "--repeat must be between 1 and 1000 (got -2)"),
            (["race", "--hold", "-5"], "--hold must be in 1...5000 ms"),
        ]
        for (arguments, error) in cases {
            #expect(parseError(arguments) == error, "\(arguments)")
            let joined = Array(arguments.dropLast(2)) + ["\(arguments[arguments.count - 2])=\(arguments.last!)"]
            #expect(parseError(joined) == error, "\(joined)")
        }
    }

    /// A flag where a numeric value should be is a missing value, not eaten as the value
    /// (`.unconditional` parsing would take it) nor read as a bad number.
    @Test func aFlagAfterANumericOptionIsAMissingValue() {
        #expect(parseError(["migrate", "--batch", "--json"])
                == "The value '--json' is invalid for '--batch <batch>': that is a flag: the value is missing")
        #expect(parseError(["copy", "--total", "--json"])
                == "The value '--json' is invalid for '--total <total>': that is a flag: the value is missing")
        #expect(parseError(["torture", "--seconds", "-h"])
                == "The value '-h' is invalid for '--seconds <seconds>': that is a flag: the value is missing")
        #expect(parseError(["migrate", "--batch"]) == "Missing value for '--batch <batch>'")
        #expect(parseError(["copy", "--batch", "x"]) == "The value 'x' is invalid for '--batch <batch>': expected an integer")
    }

    /// `copy` and `run copy` share their checks; each names the setting as its user typed
    /// it: `--host-memory`/`--repeats` (flags) or `span`/`passes` (keys).
    @Test func copyErrorsNameWhatTheUserTyped() {
        #expect(parseError(["copy", "--total", "8M", "--host-memory", "4M"])
                == "--host-memory 4M is smaller than --total 8M: the frames of one pass must fit in it")
        #expect(parseError(["run", "copy", "--set", "total=8M", "span=4M"])
                == "copy (total=8M span=4M): span 4M is smaller than total 8M: the frames of one pass must fit in it")
        #expect(parseError(["copy", "--page-size", "3000", "--total", "8M"])
                == "--total 8M must be a positive multiple of --page-size 3000")
        #expect(parseError(["copy", "--queue-depth", "0"]) == "--queue-depth must be in 1...4096 (got 0)")
        var o = CopyOptions()
        o.repeats = 0
        #expect(throws: ScenarioError(scenario: "copy", message: "passes must be in 1...100 (got 0)")) { try CopyScenario.validate(o) }
        o.naming = .commandFlags
        #expect(throws: ScenarioError(scenario: "copy", message: "--repeats must be in 1...100 (got 0)")) { try CopyScenario.validate(o) }
        o.repeats = 3
        o.hostBytes = 4096
        #expect(throws: ScenarioError(scenario: "copy", message: "--host-memory 4K is smaller than --total 256M: the frames of one pass must fit in it")) {
            try CopyScenario.validate(o)
        }
        o.naming = .scenarioKeys
        #expect(throws: ScenarioError(scenario: "copy", message: "span 4K is smaller than total 256M: the frames of one pass must fit in it")) {
            try CopyScenario.validate(o)
        }
    }

    /// A run that fails after its arguments were accepted (here: more memory than the machine
    /// has) is not a usage error: no usage line (it used to be the root command's), status 1.
    @Test(.enabled(if: SystemMemory.available().map { $0 < 1 << 40 } ?? false, "needs a machine with less than 1 TiB available"))
    func aFailedRunIsAnErrorWithoutUsage() throws {
        for arguments in [["migrate", "--total", "1T"], ["copy", "--total", "1T"], ["torture", "--vram", "1T"]] {
            var command = try DmemBench.parseAsRoot(arguments)
            do {
                try command.run()
                Issue.record("\(arguments) ran")
            } catch {
                let message = DmemBench.fullMessage(for: error)
                #expect(message.hasPrefix("Error: ") && message.contains("MemAvailable"), "\(arguments): \(message)")
                #expect(!message.contains("Usage"), "\(arguments): \(message)")
                #expect(DmemBench.exitCode(for: error) == .failure, "\(arguments)")
            }
        }
    }

    /// `run` and the suite show FAIL in the table for a point whose bytes did not survive;
    /// the command must then fail too (as `copy` does), after writing its outputs.
    @Test func aVerificationFailureFailsTheCommand() throws {
        var fake = FakeScenario()
        fake.verified = false
        let jobs = [BenchJob(scenario: fake, parameters: try ScenarioParameters(for: fake, overrides: [("batch", "8")]))]
        let session = BenchSession(options: try BenchOptions.parse(["--quiet"]))
        #expect(throws: ExitCode.failure) { try session.execute(jobs) }
        #expect(fake.counter.calls == 1)

        let results = try BenchRunner().run(jobs)
        #expect(BenchSession.verificationFailure(results)
            == "verification failed (bytes moved do not match) in 1 of 1 records: fake batch=8 h2d")
        let good = FakeScenario()
        let passed = try BenchRunner().run([BenchJob(scenario: good, parameters: try ScenarioParameters(for: good))])
        #expect(BenchSession.verificationFailure(passed) == nil)
    }

    /// Under --repeat a point verified only if every repeat did: one that did not fails the command.
    @Test func aVerificationFailureInARepeatedPointFailsTheCommand() throws {
        var fake = FakeScenario()
        fake.verified = false
        let jobs = [BenchJob(scenario: fake, parameters: try ScenarioParameters(for: fake))]
        let results = try BenchRunner(repeats: 2).run(jobs)
        #expect(results.map(\.repeats) == [2] && results[0].record["verified"] == .bool(false))
        #expect(BenchSession.verificationFailure(results) != nil)
    }

    /// Range errors of migrate, torture and race say what was given, and torture's names its flag.
    @Test func rangeErrorsSayWhatWasGiven() {
        #expect(parseError(["migrate", "--batch", "0"]) == "--batch must be in 1...4096 (got 0)")
        #expect(parseError(["migrate", "--pipeline", "9"]) == "--pipeline must be in 1...8 (got 9)")
        #expect(parseError(["torture", "--threads", "65"]) == "--threads must be in 1...64 (got 65)")
        #expect(parseError(["torture", "--pages-per-thread", "0"]) == "--pages-per-thread must be in 64...262144 (got 0)")
        #expect(parseError(["torture", "--vram", "3M"]) == "--vram must be a positive multiple of 2M (got 3M)")
    }

    /// Flags that cannot act are refused instead of ignored: fixed buffers off io_uring (copy
    /// and migrate accepted them, torture did not), and outputs of a suite dry run (no file was written).
    @Test func flagsThatCannotActAreRefused() {
        #expect(parseError(["copy", "--fixed-buffers", "on", "--backend", "memcpy"])
                == "fixed buffers are io_uring's: use them with the iouring backend")
        #expect(parseError(["run", "copy", "--set", "fixed-buffers=on", "backend=mapped"])
                == "copy (fixed-buffers=on backend=mapped): fixed buffers are io_uring's: use them with the iouring backend")
        #expect(parseError(["copy", "--fixed-buffers", "on"]) == nil)
        #expect(parseError(["migrate", "--fixed-buffers", "on", "--backend", "mapped"])
                == "fixed buffers are io_uring's: use them with the iouring backend or fault-backend")
        #expect(parseError(["migrate", "--fixed-buffers", "on", "--backend", "mapped", "--fault-backend", "iouring"]) == nil)
        #expect(parseError(["suite", "--dry-run", "--json", "r.json", "--repeat", "3"])
                == "--dry-run measures nothing, so --json, --repeat would do nothing: leave out one or the other")
        #expect(parseError(["suite", "--dry-run", "--quick"]) == nil)
    }

    /// A mistyped command is named as such, not as the suite's "2 unexpected arguments".
    @Test func anUnknownCommandIsNamed() {
        #expect(parseError(["lsit"]) == "unknown command 'lsit' (commands: suite, run, list, copy, mm, migrate, thrash, torture, race; see dmem-bench --help)")
        #expect(parseError(["rn", "memcpy"])?.hasPrefix("unknown command 'rn'") == true)
        #expect(parseError(["--dry-run", "--quick"]) == nil)
    }

    /// `mm --pages` and `thrash --pages` take the K/M counts the scenario keys (and the suite) use.
    @Test func pageCountsTakeTheSuffixesOfTheScenarioKeys() throws {
        let mm = try #require(try DmemBench.parseAsRoot(["mm", "--pages", "4K"]) as? MMCommand)
        #expect(mm.pages?.bytes == 4096)
        #expect(parseError(["mm", "--pages", "16M"]) == nil)
        #expect(parseError(["mm", "--pages", "17M"]) == "--pages must be in 1...16Mi")
        #expect(parseError(["mm", "--pages", "0"]) == "--pages must be in 1...16Mi")
        let thrash = try #require(try DmemBench.parseAsRoot(["thrash", "--pages", "1K"]) as? ThrashCommand)
        #expect(try thrash.options.pages == 1024)
        #expect(parseError(["thrash", "--pages", "512K"]) == "--pages must be in 64...262144 (got 524288)")
    }
}
