//! Conversion credit: how one conversion's value is split over the touchpoints before it.

/// The attribution models, each stored for every conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// All credit to the newest touchpoint (the default in reports).
    LastTouch,
    /// All credit to the oldest touchpoint in the lookback window.
    FirstTouch,
    /// Equal shares.
    Linear,
    /// Shares halve every half-life of age at conversion time.
    TimeDecay,
}

impl Model {
    pub const ALL: [Model; 4] = [Model::LastTouch, Model::FirstTouch, Model::Linear, Model::TimeDecay];

    pub fn as_str(self) -> &'static str {
        match self {
            Model::LastTouch => "last_touch",
            Model::FirstTouch => "first_touch",
            Model::Linear => "linear",
            Model::TimeDecay => "time_decay",
        }
    }
}

/// Credit shares (summing to 1) for touchpoints at `times` (Unix ms, any order) for a
/// conversion at `at`. Touchpoints after the conversion get nothing; an empty result means no
/// touchpoint qualifies. Ties for first or last go to the earlier entry in `times`.
pub fn credit(model: Model, times: &[i64], at: i64, half_life: i64) -> Vec<f64> {
    let mut shares = vec![0.0; times.len()];
    let eligible: Vec<usize> = (0..times.len()).filter(|&i| times[i] <= at).collect();
    if eligible.is_empty() {
        return Vec::new();
    }
    match model {
        Model::LastTouch | Model::FirstTouch => {
            let pick = eligible.iter().copied().reduce(|best, i| {
                let better = if model == Model::LastTouch { times[i] > times[best] } else { times[i] < times[best] };
                if better { i } else { best }
            });
            shares[pick.expect("not empty")] = 1.0;
        }
        Model::Linear => {
            let share = 1.0 / eligible.len() as f64;
            for i in eligible {
                shares[i] = share;
            }
        }
        Model::TimeDecay => {
            let half_life = half_life.max(1) as f64;
            let weights: Vec<f64> = eligible.iter().map(|&i| (-((at - times[i]) as f64) / half_life).exp2()).collect();
            let total: f64 = weights.iter().sum();
            for (&i, w) in eligible.iter().zip(weights) {
                shares[i] = w / total;
            }
        }
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    const DAY: i64 = 86_400_000;

    #[test]
    fn four_models_on_a_fixed_sequence() {
        // Touchpoints 14, 7 and 0 days before the conversion; one after it.
        let times = [0, 7 * DAY, 14 * DAY, 15 * DAY];
        let at = 14 * DAY;
        assert_eq!(credit(Model::LastTouch, &times, at, 7 * DAY), vec![0.0, 0.0, 1.0, 0.0]);
        assert_eq!(credit(Model::FirstTouch, &times, at, 7 * DAY), vec![1.0, 0.0, 0.0, 0.0]);
        let third = 1.0 / 3.0;
        assert_eq!(credit(Model::Linear, &times, at, 7 * DAY), vec![third, third, third, 0.0]);
        // Weights 1/4, 1/2, 1 → 1/7, 2/7, 4/7.
        let decay = credit(Model::TimeDecay, &times, at, 7 * DAY);
        for (got, want) in decay.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0, 0.0]) {
            assert!((got - want).abs() < 1e-12, "{decay:?}");
        }
        assert!(credit(Model::Linear, &[5 * DAY], 0, DAY).is_empty());
    }
}
