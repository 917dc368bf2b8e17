//! The offline voice: a small synthesiser that hums each spoken letter as a low, wavering
//! tone with a breath of noise over it, and keeps silent for spaces and punctuation. It
//! renders 16-bit mono WAV at 11 025 Hz and reports an alignment of ElevenLabs' shape, so
//! every path the voice takes (pieces, pans, planchette timing, a browser playing it) runs
//! without a key or a download.

use std::f64::consts::TAU;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Alignment, SpeechPiece, VoiceError, VoiceProvider};

pub const SAMPLE_RATE: u32 = 11_025;
/// How long a letter or digit is hummed.
pub const LETTER_MS: u64 = 200;
/// The silence of a space.
pub const SPACE_MS: u64 = 160;
/// The silence of anything else (punctuation).
pub const MARK_MS: u64 = 80;
const HEADER_BYTES: usize = 44;

#[derive(Debug, Default, Clone, Copy)]
pub struct OfflineVoice;

fn duration_ms(c: char) -> u64 {
    if c.is_alphanumeric() {
        LETTER_MS
    } else if c.is_whitespace() {
        SPACE_MS
    } else {
        MARK_MS
    }
}

fn samples_for(ms: u64) -> usize {
    usize::try_from(ms * u64::from(SAMPLE_RATE) / 1000).unwrap_or(0)
}

/// A RIFF/WAVE header for `data_bytes` of 16-bit mono PCM.
pub fn wav_header(data_bytes: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(b"RIFF");
    header.extend_from_slice(&(36 + data_bytes).to_le_bytes());
    header.extend_from_slice(b"WAVEfmt ");
    header.extend_from_slice(&16u32.to_le_bytes());
    header.extend_from_slice(&1u16.to_le_bytes()); // PCM
    header.extend_from_slice(&1u16.to_le_bytes()); // mono
    header.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    header.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&16u16.to_le_bytes());
    header.extend_from_slice(b"data");
    header.extend_from_slice(&data_bytes.to_le_bytes());
    header
}

/// A small deterministic noise source (an LCG), so the same answer sounds the same.
struct Breath(u32);

impl Breath {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        f64::from(self.0 >> 8) / f64::from(1u32 << 24) * 2.0 - 1.0
    }
}

/// A voice's base pitch, from its id: low and different per persona.
fn base_hz(voice_id: &str) -> f64 {
    let sum: u32 = voice_id.bytes().map(u32::from).sum();
    82.0 + f64::from(sum % 40)
}

/// The samples of one character.
fn render(c: char, base: f64, breath: &mut Breath) -> Vec<i16> {
    let n = samples_for(duration_ms(c));
    if !c.is_alphanumeric() {
        return vec![0; n];
    }
    // A minor-pentatonic step per letter, so a word wanders rather than drones.
    const STEPS: [f64; 5] = [0.0, 3.0, 5.0, 7.0, 10.0];
    let index = c.to_ascii_uppercase() as usize;
    let hz = base * 2f64.powf(STEPS[index % STEPS.len()] / 12.0);
    let rate = f64::from(SAMPLE_RATE);
    let mut low = 0.0;
    (0..n)
        .map(|i| {
            let t = i as f64 / rate;
            let progress = i as f64 / n as f64;
            // Swell in and fade out.
            let envelope = (progress * std::f64::consts::PI).sin().powf(0.7);
            let vibrato = 1.0 + 0.03 * (TAU * 5.0 * t).sin();
            let phase = TAU * hz * vibrato * t;
            let hum = 0.55 * phase.sin() + 0.2 * (2.0 * phase).sin() + 0.1 * (3.0 * phase).sin();
            // Low-passed noise: the breath.
            low += 0.2 * (breath.next() - low);
            let sample = envelope * (hum + 0.35 * low) * 0.6;
            (sample.clamp(-1.0, 1.0) * f64::from(i16::MAX)) as i16
        })
        .collect()
}

/// The whole answer as WAV bytes and its alignment (for tests and the cache).
pub fn synthesise(voice_id: &str, text: &str) -> (Vec<u8>, Alignment) {
    let mut bytes = Vec::new();
    let mut alignment = Alignment::default();
    for piece in pieces(voice_id, text) {
        bytes.extend(piece.audio);
        if let Some(a) = piece.alignment {
            alignment.characters.extend(a.characters);
            alignment
                .character_start_times_seconds
                .extend(a.character_start_times_seconds);
            alignment
                .character_end_times_seconds
                .extend(a.character_end_times_seconds);
        }
    }
    (bytes, alignment)
}

/// The answer in pieces of a word each (with the space after it), the first carrying the
/// WAV header; alignment times count from the start of the audio.
fn pieces(voice_id: &str, text: &str) -> Vec<SpeechPiece> {
    let total_samples: usize = text.chars().map(|c| samples_for(duration_ms(c))).sum();
    let data_bytes = u32::try_from(total_samples * 2).unwrap_or(u32::MAX);
    let base = base_hz(voice_id);
    let mut breath = Breath(0x5EA4CE);
    let mut out = Vec::new();
    let mut audio = wav_header(data_bytes);
    let mut alignment = Alignment::default();
    let mut at_samples = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let samples = render(c, base, &mut breath);
        let start = at_samples as f64 / f64::from(SAMPLE_RATE);
        at_samples += samples.len();
        let end = at_samples as f64 / f64::from(SAMPLE_RATE);
        alignment.characters.push(c.to_string());
        alignment.character_start_times_seconds.push(start);
        alignment.character_end_times_seconds.push(end);
        audio.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        let word_ends = c.is_whitespace() && !chars.peek().is_some_and(|n| n.is_whitespace());
        if word_ends || chars.peek().is_none() {
            out.push(SpeechPiece {
                audio: std::mem::take(&mut audio),
                alignment: Some(std::mem::take(&mut alignment)),
            });
        }
    }
    if out.is_empty() {
        out.push(SpeechPiece {
            audio,
            alignment: None,
        });
    }
    out
}

#[async_trait]
impl VoiceProvider for OfflineVoice {
    fn describe(&self) -> String {
        "offline (hummed letters)".into()
    }

    fn format(&self) -> String {
        format!("wav_{SAMPLE_RATE}_16")
    }

    fn model(&self) -> String {
        "offline-1".into()
    }

    async fn speak(
        &self,
        voice_id: &str,
        text: &str,
        out: mpsc::Sender<SpeechPiece>,
    ) -> Result<(), VoiceError> {
        for piece in pieces(voice_id, text) {
            if out.send(piece).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    #[test]
    fn renders_valid_wav_as_long_as_its_alignment() {
        let (wav, alignment) = synthesise("madame-veyra", "The veil, 1891");
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u32_at(&wav, 24), SAMPLE_RATE);
        assert_eq!(&wav[36..40], b"data");
        let data = u32_at(&wav, 40) as usize;
        assert_eq!(wav.len(), HEADER_BYTES + data);
        assert_eq!(u32_at(&wav, 4) as usize, wav.len() - 8);
        let seconds = data as f64 / f64::from(SAMPLE_RATE * 2);
        let end = *alignment.character_end_times_seconds.last().unwrap_or(&0.0);
        assert!((seconds - end).abs() < 1e-9, "{seconds} vs {end}");
        assert_eq!(alignment.characters.concat(), "The veil, 1891");
        assert!(
            alignment
                .character_start_times_seconds
                .windows(2)
                .all(|w| w[0] <= w[1])
        );
        // Letters are heard, spaces are silent.
        let letter = &wav[HEADER_BYTES..HEADER_BYTES + 2 * samples_for(LETTER_MS)];
        assert!(letter.iter().any(|b| *b != 0));
        let space_at = HEADER_BYTES + 2 * 3 * samples_for(LETTER_MS);
        assert!(
            wav[space_at..space_at + 2 * samples_for(SPACE_MS)]
                .iter()
                .all(|b| *b == 0)
        );
    }

    #[tokio::test]
    async fn streams_a_piece_per_word_that_add_up_to_the_whole() {
        let (tx, mut rx) = mpsc::channel(16);
        OfflineVoice
            .speak("v", "Heavy seas ahead", tx)
            .await
            .unwrap_or_default();
        let mut pieces = Vec::new();
        while let Some(piece) = rx.recv().await {
            pieces.push(piece);
        }
        assert_eq!(pieces.len(), 3);
        let joined: Vec<u8> = pieces.iter().flat_map(|p| p.audio.clone()).collect();
        assert_eq!(joined, synthesise("v", "Heavy seas ahead").0);
        assert_eq!(
            pieces[1].alignment.as_ref().map(|a| a.characters.concat()),
            Some("seas ".to_owned())
        );
    }
}
