import Glibc

/// The Swift runtime's demangler (exported by every Swift runtime on Linux).
@_silgen_name("swift_demangle")
private func runtimeDemangle(_ mangled: UnsafePointer<CChar>?, _ length: Int, _ output: UnsafeMutablePointer<CChar>?,
                             _ outputSize: UnsafeMutablePointer<Int>?, _ flags: UInt32) -> UnsafeMutablePointer<CChar>?

/// Type names as the wire carries them (mangled) and as people read them.
internal enum TypeNames {
    /// `mangled` (a name from `_mangledTypeName`) demangled, such as
    /// `"MyApp.Resize"`; the name as it is when it does not demangle.
    static func readable(_ mangled: String) -> String {
        let symbol = mangled.hasPrefix("$s") ? mangled : "$s" + mangled
        guard let pointer = symbol.withCString({ runtimeDemangle($0, strlen($0), nil, nil, 0) }) else { return mangled }
        defer { free(pointer) }
        return String(cString: pointer)
    }

    /// The readable name, then the mangled one it came from (`"MyApp.Resize
    /// ('5MyApp6ResizeV')"`); the name alone, quoted, when it does not demangle.
    static func described(_ mangled: String) -> String {
        let name = readable(mangled)
        return name == mangled ? "'\(mangled)'" : "\(name) ('\(mangled)')"
    }
}
