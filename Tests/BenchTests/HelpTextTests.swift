import Testing
@testable import dmem_bench

/// Help text and `list` stay readable at 80 columns: ArgumentParser re-wraps wider
/// discussion lines at the left margin, and one long list of words widened every row of `list`.
@Suite struct HelpTextTests {
    @Test func aTermsDescriptionWrapsUnderItself() {
        let text = HelpText.term("gpu-read", String(repeating: "word ", count: 30), column: 21)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count > 1)
        #expect(lines.allSatisfy { $0.count <= HelpText.width })
        #expect(lines[0].hasPrefix("  gpu-read           word"))
        #expect(lines.dropFirst().allSatisfy { $0.hasPrefix(String(repeating: " ", count: 21) + "word") })
        #expect(HelpText.term("dmem-bench race", "", column: 40) == "  dmem-bench race")
        #expect(HelpText.term("a-term-wider-than-the-column", "text", column: 10) == "  a-term-wider-than-the-column\n          text")
    }

    @Test func raceHelpListsFitIn80Columns() {
        let discussion = RaceCommand.configuration.discussion
        let lines = discussion.split(separator: "\n", omittingEmptySubsequences: false)
        let flows = lines.drop { $0 != "Flows:" }.prefix { !$0.isEmpty }
        let examples = lines.drop { $0 != "Examples:" }.prefix { !$0.isEmpty }
        #expect(flows.count > 20 && examples.count > 4)
        for line in flows + examples {
            #expect(line.count <= HelpText.width, "\(line)")
        }
    }

    @Test func listPutsLongValueListsBelowTheTable() {
        let text = ListCommand.text(registry: .standard, suite: .standard)
        let race = text.split(separator: "\n").drop { !$0.hasPrefix("race:") }.prefix { !$0.isEmpty }
        #expect(race.contains { $0.hasPrefix("  action ") && $0.contains("one of \(RaceAction.allCases.count + 1), below") })
        #expect(race.contains { $0.hasPrefix("  action: all none cpu-read") })
        #expect(race.allSatisfy { !$0.contains("|migrate-to-device|") })
        let table = race.filter { $0.hasPrefix("  flow ") || $0.hasPrefix("  pages ") }
        #expect(table.allSatisfy { $0.count < 120 }, "\(table)")
    }
}
