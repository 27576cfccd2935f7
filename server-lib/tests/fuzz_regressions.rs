//! Inputs that broke the server while its fuzz targets ran (`fuzz/`, `docs/fuzzing.md`), kept
//! as plain tests so they stay fixed without the fuzzer.

use trailmark_server::domain::links::append_query;

/// The click id, read back from a redirect's query as a browser would.
fn click_id_of(location: &str) -> Option<String> {
    let url = url::Url::parse(location).expect("a valid URL");
    url.query_pairs().find(|(k, _)| k == "tm_click_id").map(|(_, v)| v.into_owned())
}

/// A web destination whose query ends with a `?` (`?ref=a?`): the click id was glued to the
/// last query value (`ref=a?tm_click_id=…`), so the landing page never saw it. Found by the
/// `click` target; the first case is its input (the link's web destination), byte for byte.
#[test]
fn click_id_survives_a_query_that_ends_with_a_question_mark() {
    let found_by_fuzzer = "intent://+utm++%?:%++~++++++++++++++%++~++++++++++utm++%?:%++~+++++:11051/++++++++++++++++++++++~+++++++++++++++++++~+++++++++[+++++++++++++++++++++++Ei-:en%%?:%EEEEEEEEEEE*EW++++++utm++%?:%++~++++++++++++++++++++++++++++++++++++++++Ei-:en%%?:%EEEEEEEEEEE*EW++++++utm++%?:%++~++++++++++++++++++++++++++++++~+++++++++[++~++++++utm_source=+++++__+_+__________++++++++++++++++++uspi-:en%%?:%EEEEEEEEEEE*EE%?%:&[%?%?link=EEEEEEEEEEEEEE%?%:&[EEEE%++~++++++++*+u&[EEEE%++~++++++++++++++++++++++++++~+++++++++[+++++++++++++++++++?";
    let id = "76767676-7676-7676-7676-76767676763d";
    for base in [found_by_fuzzer, "https://shop.example/p?ref=a?", "https://shop.example/p?ref=a?#top"] {
        let location = append_query(base, &[("tm_click_id", id)]);
        assert_eq!(click_id_of(&location).as_deref(), Some(id), "{location}");
    }
    // An empty query or one ending with `&` still takes the pair without a separator.
    assert_eq!(append_query("https://x.example/l?", &[("a", "1")]), "https://x.example/l?a=1");
    assert_eq!(append_query("https://x.example/l?b=2&", &[("a", "1")]), "https://x.example/l?b=2&a=1");
}
