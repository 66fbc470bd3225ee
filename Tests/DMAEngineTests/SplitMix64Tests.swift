import DMAEngine
import Testing

/// The shared seeded generator: its sequence is what makes seeded faults, fuzz runs
/// and bench layouts reproducible, so its first values are pinned here.
@Suite struct SplitMix64Tests {
    /// First four outputs per seed, from the reference SplitMix64 (seed 0 starts with
    /// the published 0xE220A8397B1DCDAF) and from the copies this generator replaced.
    static let firstValues: [(seed: UInt64, values: [UInt64])] = [
        (0, [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F, 0xF88B_B8A8_724C_81EC]),
        (1, [0x910A_2DEC_8902_5CC1, 0xBEEB_8DA1_658E_EC67, 0xF893_A2EE_FB32_555E, 0x71C1_8690_EE42_C90B]),
        (99, [0x42F3_A936_4C47_6BE3, 0x081A_B918_879D_69A4, 0xD5B2_D034_F041_D2FB, 0x1A31_9A9C_B967_2CD7]),
        (0x5eed, [0x09F1_FD9D_03F0_A9B4, 0x5532_7416_1BBF_8475, 0x5D5B_CA46_96B3_43B3, 0x70D2_9B6C_7D22_528D]),
        (.max, [0xE4D9_7177_1B65_2C20, 0xE99F_F867_DBF6_82C9, 0x382F_F84C_B272_81E9, 0x6D1D_B36C_CBA9_82D2]),
    ]

    @Test func firstValuesPerSeedAreThoseOfTheReferenceSequence() {
        for (seed, expected) in Self.firstValues {
            var generator = SplitMix64(seed: seed)
            let values = (0..<expected.count).map { _ in generator.next() }
            #expect(values == expected, "seed \(seed)")
        }
    }
}
