// What every libFuzzer harness here shares: the driver hand-off and the invariant check.

/// Stops the run with `what` when an invariant does not hold (libFuzzer saves the input).
@inline(never)
public func check(_ condition: Bool, _ what: StaticString) {
    if !condition { fatalError("invariant broken: \(what)") }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32

/// SwiftPM links an executable's entry point as `<module>_main`; each harness defines that
/// symbol and hands control to libFuzzer's driver through here.
public func runFuzzer(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                      _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32 {
    var c = argc
    var v = argv
    return LLVMFuzzerRunDriver(&c, &v, callback)
}
