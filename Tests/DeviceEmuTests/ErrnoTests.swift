import DMAEngine
import DeviceEmu
import HostMM
import SystemPackage
import Testing

/// Every error of the public API reaches a driver author as an errno, without @testable.
@Suite struct ErrnoTests {
    /// A driver of its own on HostMM (the guide's section 11) gets the errno of HostMM's
    /// errors from DeviceEmu, as `DeviceError.errno` reports them when wrapped.
    @Test func hostMMErrorsHaveTheirErrno() {
        #expect(HostMMError.invalidArgument.errno == .invalidArgument)
        #expect(HostMMError.busy.errno == .resourceBusy)
        #expect(HostMMError.outOfMemory.errno == .noMemory)
        #expect(HostMMError.busError(address: 0x1000).errno == .badAddress)
        #expect(DeviceError.hostMM(.busy).errno == HostMMError.busy.errno)
    }
}
