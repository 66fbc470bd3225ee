@testable import DMAEngine
import Glibc
import SystemPackage
import Testing

/// Per-ticket status (dmadev's `rte_dma_completed_status()`) and the capacity query.
@Suite struct DescriptorStatusTests {
    @Test func reportsSucceededFailedPendingAndExpired() throws {
        let plan = FaultPlan(rules: [.init(.nth(1), .fail(.badAddress)), .init(.nth(2), .shortCopy(bytes: 10)),
                                     .init(.nth(4), .delay(.milliseconds(500)))])
        let engine = try DMAEngine(configuration: .init(backend: .faultInjecting(plan, wrapping: .ioUring), statusHistory: 8))
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 1 << 16)
        let ch = try engine.makeChannel()
        func fills(_ n: Int) throws -> Fence {
            for i in 0..<n { try ch.enqueueFill(vram.address(i * 64), length: 64, value: 1) }
            return try ch.submit()
        }
        let t0 = DMATicket(rawValue: 0)
        try? fills(4).wait(timeout: .seconds(10))
        #expect(try ch.status(of: t0..<DMATicket(rawValue: 4))
                == [.succeeded, .failed(.badAddress, bytesCompleted: 0), .failed(.ioError, bytesCompleted: 10), .succeeded])
        let slow = try fills(2)  // ticket 4 is delayed
        #expect(try ch.status(of: DMATicket(rawValue: 4)) == .pending)
        try slow.wait(timeout: .seconds(10))
        #expect(try ch.status(of: DMATicket(rawValue: 5)) == .succeeded)
        try ch.enqueueFill(vram.address(0), length: 1)
        #expect(try ch.status(of: DMATicket(rawValue: 6)) == .pending, "enqueued, not submitted")
        try ch.submit().wait(timeout: .seconds(10))
        try fills(4).wait(timeout: .seconds(10))  // tickets 7…10: 0…2 leave the window of 8
        #expect(try ch.status(of: t0..<DMATicket(rawValue: 4)) == [.expired, .expired, .expired, .succeeded])
        #expect(try ch.status(of: DMATicket(rawValue: 10)) == .succeeded)
    }

    @Test func refusesUnissuedTicketsAndOverlongRanges() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy, statusHistory: 4))
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 4096)
        let ch = try engine.makeChannel()
        #expect(throws: DMAError.invalidArgument("tickets up to 0 asked, but the channel issued only 0")) {
            try ch.status(of: DMATicket(rawValue: 0))
        }
        for _ in 0..<6 { try ch.enqueueFill(vram.address(0), length: 1) }
        try ch.submit().wait(timeout: .seconds(5))
        #expect(throws: DMAError.invalidArgument("5 tickets asked; at most statusHistory (4) at a time")) {
            try ch.status(of: DMATicket(rawValue: 0)..<DMATicket(rawValue: 5))
        }
        #expect(throws: DMAError.invalidArgument("ticket \(UInt64.max) was never issued")) {
            try ch.status(of: DMATicket(rawValue: .max))
        }
        #expect(try ch.status(of: DMATicket(rawValue: 2)..<DMATicket(rawValue: 6)) == Array(repeating: .succeeded, count: 4))
        #expect(try ch.status(of: DMATicket(rawValue: 3)..<DMATicket(rawValue: 3)).isEmpty)
    }

    /// Size a burst with `capacity` instead of meeting `.batchFull` half-way.
    @Test func capacitySizesABurst() throws {
        let engine = try DMAEngine(configuration: .init(backend: .memcpy, maxBatch: 5))
        defer { engine.shutdown() }
        let vram = try engine.createVRAMPool(size: 4096)
        let ch = try engine.makeChannel()
        try ch.enqueueFill(vram.address(0), length: 1)
        var placed = 0
        while placed < 100 {
            let burst = min(ch.capacity, 100 - placed)
            if burst == 0 { _ = try ch.submit(); continue }
            for _ in 0..<burst { try ch.enqueueFill(vram.address(placed % 4096), length: 1) }
            placed += burst
        }
        try ch.submit().wait(timeout: .seconds(5))
        #expect(ch.statistics.descriptors == 101 && ch.statistics.batches == 21)
    }

    @Test func configurationBoundsAreTypedErrors() {
        #expect(throws: DMAError.invalidArgument("maxBatch 0 outside 1…1048576")) {
            try DMAEngine(configuration: .init(backend: .memcpy, maxBatch: 0))
        }
        #expect(throws: DMAError.invalidArgument("maxBatch \(Int.max) outside 1…1048576")) {
            try DMAEngine(configuration: .init(backend: .memcpy, maxBatch: .max))
        }
        #expect(throws: DMAError.invalidArgument("statusHistory 0 outside 1…1073741824")) {
            try DMAEngine(configuration: .init(backend: .memcpy, statusHistory: 0))
        }
        #expect(throws: DMAError.invalidArgument("mappedWorkers threads 0 outside 1…64")) {
            try DMAEngine(configuration: .init(backend: .mappedWorkers(threads: 0))).makeChannel()
        }
    }
}
