/// Throughput samples of one side of a scenario, in operations per second.
struct Samples: Codable {
    var operationsPerSecond: [Double]

    init(operations: Int, seconds: [Double]) {
        operationsPerSecond = seconds.map { Double(operations) / max($0, 1e-9) }
    }

    init(rates: [Double]) {
        operationsPerSecond = rates
    }

    var median: Double {
        let sorted = operationsPerSecond.sorted()
        guard !sorted.isEmpty else { return .nan }
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }

    /// Half the distance between the smallest and largest sample, as a
    /// percentage of the median.
    var spreadPercent: Double {
        guard let low = operationsPerSecond.min(), let high = operationsPerSecond.max(), median > 0 else { return .nan }
        return (high - low) / 2 / median * 100
    }
}

/// Formats a rate with a unit prefix: 1234567 → "1.23 M".
func formatRate(_ value: Double) -> String {
    guard value.isFinite else { return "—" }
    let prefixes: [(Double, String)] = [(1e9, "G"), (1e6, "M"), (1e3, "k")]
    for (scale, prefix) in prefixes where value >= scale {
        return String(format3(value / scale)) + " " + prefix
    }
    return format3(value)
}

/// Three significant digits, without Foundation.
func format3(_ value: Double) -> String {
    guard value.isFinite else { return "—" }
    if value >= 100 { return String(Int(value.rounded())) }
    if value >= 10 { return String(Double(Int((value * 10).rounded())) / 10) }
    return String(Double(Int((value * 100).rounded())) / 100)
}
