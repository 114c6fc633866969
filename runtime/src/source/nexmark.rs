//! Nexmark events (the online auction of the Nexmark benchmark): people, auctions and bids in
//! the standard proportions (1 : 3 : 46 in every 50 events), ids and "hot" auctions, sellers
//! and bidders chosen as the reference generator (Beam's, and Flink's nexmark-flink) chooses
//! them, so the queries' results have its shape. Event `i` depends only on the seed and `i`,
//! as every generated line does (see [`super::generator`]); its `dateTime` is its generation
//! time, the stream time at which the source emits it (milliseconds from the job's start), so
//! a window over batch times is a window over event times.
//!
//! Each event is one JSON object with a `type` of `person`, `auction` or `bid` and the model's
//! fields in camelCase.

use std::fmt::Write;

use compact_str::{CompactString, format_compact};

/// Of every 50 events: 1 person, 3 auctions, 46 bids.
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const NUM_CATEGORIES: u64 = 5;
/// People who bid and sell at a time, and how far past the newest a new id may reach.
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const PERSON_ID_LEAD: u64 = 10;
/// Auctions open at a time, and the lead past the newest.
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const AUCTION_ID_LEAD: u64 = 10;
/// Hot auctions, bidders and sellers: the first of each run of 100 ids.
const HOT_ID_GROUP: u64 = 100;
/// One in this many bids goes to any open auction; the others to a hot one (the reference
/// configuration's defaults).
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_SELLER_RATIO: u64 = 4;
const CHANNELS: u64 = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/googl/item.htm?query=1",
    "https://www.nexmark.com/meta/item.htm?query=1",
    "https://www.nexmark.com/bidu/item.htm?query=1",
    "https://www.nexmark.com/aapl/item.htm?query=1",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
/// Auctions last this long on average, in events' stream time.
const AUCTION_LENGTH_MS: u64 = 10_000;

/// What an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Person,
    Auction,
    Bid,
}

/// The kind of event `index`.
pub fn kind(index: u64) -> EventKind {
    match index % TOTAL_PROPORTION {
        o if o < PERSON_PROPORTION => EventKind::Person,
        o if o < PERSON_PROPORTION + AUCTION_PROPORTION => EventKind::Auction,
        _ => EventKind::Bid,
    }
}

/// The newest person id (from 0) at event `index`: one person opens each run of 50 events.
fn last_person(index: u64) -> u64 {
    index / TOTAL_PROPORTION * PERSON_PROPORTION
}

/// The newest auction id (from 0) at event `index`.
fn last_auction(index: u64) -> u64 {
    let mut epoch = index / TOTAL_PROPORTION;
    let mut offset = index % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        // A person comes first in each run of 50: the newest auction is the previous run's.
        epoch = epoch.wrapping_sub(1);
        offset = AUCTION_PROPORTION - 1;
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch.wrapping_mul(AUCTION_PROPORTION).wrapping_add(offset)
}

/// SplitMix64 over the event's own stream, as the line generator draws.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        super::generator::splitmix(&mut self.0)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n.max(1))) >> 64) as u64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A price in cents: 10^(0..6) dollars, log-uniform, as the reference draws it.
    fn price(&mut self) -> u64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as u64
    }

    /// A person who is active at event `index`, or just about to be.
    fn person(&mut self, index: u64) -> u64 {
        let people = last_person(index) + 1;
        let active = people.min(NUM_ACTIVE_PEOPLE);
        people - active + self.below(active + PERSON_ID_LEAD)
    }

    /// An auction open at event `index`, or just about to be.
    fn auction(&mut self, index: u64) -> u64 {
        let newest = last_auction(index);
        let oldest = newest.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
        oldest + self.below(newest - oldest + 1 + AUCTION_ID_LEAD)
    }

    /// `len` lowercase letters.
    fn word(&mut self, len: usize, out: &mut String) {
        for _ in 0..len {
            out.push((b'a' + self.below(26) as u8) as char);
        }
    }
}

/// One Nexmark event, as the model has it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: &'static str,
    pub state: &'static str,
    pub date_time: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: u64,
    pub expires: u64,
    pub seller: u64,
    pub category: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    /// Texts that are mostly one of a few constants: kept as references to them, or inline,
    /// so that most bids are made without an allocation.
    pub channel: CompactString,
    pub url: CompactString,
    pub date_time: u64,
}

/// Event `index` of the stream seeded `seed`, whose time is `time_ms`.
pub fn generate(seed: u64, index: u64, time_ms: u64) -> Event {
    let mut d = Draws(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
    match kind(index) {
        EventKind::Person => {
            let id = last_person(index) + FIRST_PERSON_ID;
            let first = FIRST_NAMES[d.below(FIRST_NAMES.len() as u64) as usize];
            let last = LAST_NAMES[d.below(LAST_NAMES.len() as u64) as usize];
            let city = CITIES[d.below(CITIES.len() as u64) as usize];
            let state = STATES[d.below(STATES.len() as u64) as usize];
            let mut email_address = String::with_capacity(17);
            d.word(7, &mut email_address);
            email_address.push('@');
            d.word(5, &mut email_address);
            email_address.push_str(".com");
            let mut credit_card = String::with_capacity(19);
            for i in 0..4 {
                if i > 0 {
                    credit_card.push(' ');
                }
                let _ = write!(credit_card, "{:04}", d.below(10_000));
            }
            Event::Person(Person {
                id,
                name: format!("{first} {last}"),
                email_address,
                credit_card,
                city,
                state,
                date_time: time_ms,
            })
        }
        EventKind::Auction => {
            let id = last_auction(index) + FIRST_AUCTION_ID;
            let seller = if d.below(HOT_SELLER_RATIO) > 0 {
                (last_person(index) / HOT_ID_GROUP) * HOT_ID_GROUP
            } else {
                d.person(index)
            } + FIRST_PERSON_ID;
            let category = FIRST_CATEGORY_ID + d.below(NUM_CATEGORIES);
            let initial_bid = d.price();
            let reserve = initial_bid + d.price();
            let expires = time_ms + AUCTION_LENGTH_MS / 2 + d.below(AUCTION_LENGTH_MS);
            let mut item_name = String::with_capacity(20);
            d.word(20, &mut item_name);
            let mut description = String::with_capacity(100);
            d.word(100, &mut description);
            Event::Auction(Auction {
                id,
                item_name,
                description,
                initial_bid,
                reserve,
                date_time: time_ms,
                expires,
                seller,
                category,
            })
        }
        EventKind::Bid => {
            let auction = if d.below(HOT_AUCTION_RATIO) > 0 {
                (last_auction(index) / HOT_ID_GROUP) * HOT_ID_GROUP
            } else {
                d.auction(index)
            } + FIRST_AUCTION_ID;
            let bidder = if d.below(HOT_BIDDER_RATIO) > 0 {
                // The second of the group, so that hot bidders are not the hot sellers.
                (last_person(index) / HOT_ID_GROUP) * HOT_ID_GROUP + 1
            } else {
                d.person(index)
            } + FIRST_PERSON_ID;
            let price = d.price();
            let channel = d.below(CHANNELS);
            let (channel, url) = if d.below(100) == 0 {
                let mut url = String::from("https://www.nexmark.com/");
                d.word(5, &mut url);
                url.push_str("/item.htm?query=1");
                if d.below(10) != 9 {
                    let _ = write!(url, "&channel_id={}", (channel as u32).reverse_bits());
                }
                (format_compact!("channel-{channel}"), url.into())
            } else {
                let hot = d.below(HOT_CHANNELS.len() as u64) as usize;
                (
                    CompactString::const_new(HOT_CHANNELS[hot]),
                    CompactString::const_new(HOT_URLS[hot]),
                )
            };
            Event::Bid(Bid {
                auction,
                bidder,
                price,
                channel,
                url,
                date_time: time_ms,
            })
        }
    }
}

impl Event {
    /// Appends the event as one JSON object: a `type` of `person`, `auction` or `bid`, and the
    /// model's fields in camelCase. No field needs escaping: names, words, channels and URLs
    /// are drawn from plain ASCII.
    pub fn write_json(&self, out: &mut String) {
        let _ = match self {
            Event::Person(p) => write!(
                out,
                r#"{{"type":"person","id":{},"name":"{}","emailAddress":"{}","creditCard":"{}","city":"{}","state":"{}","dateTime":{}}}"#,
                p.id, p.name, p.email_address, p.credit_card, p.city, p.state, p.date_time
            ),
            Event::Auction(a) => write!(
                out,
                r#"{{"type":"auction","id":{},"itemName":"{}","description":"{}","initialBid":{},"reserve":{},"dateTime":{},"expires":{},"seller":{},"category":{}}}"#,
                a.id,
                a.item_name,
                a.description,
                a.initial_bid,
                a.reserve,
                a.date_time,
                a.expires,
                a.seller,
                a.category
            ),
            Event::Bid(b) => write!(
                out,
                r#"{{"type":"bid","auction":{},"bidder":{},"price":{},"channel":"{}","url":"{}","dateTime":{}}}"#,
                b.auction, b.bidder, b.price, b.channel, b.url, b.date_time
            ),
        };
    }
}

/// Appends event `index` of the stream seeded `seed`, whose time is `time_ms`, to `out`, as
/// JSON (see [`Event::write_json`]).
pub fn event(seed: u64, index: u64, time_ms: u64, out: &mut String) {
    generate(seed, index, time_ms).write_json(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    fn parsed(seed: u64, index: u64) -> Json {
        let mut line = String::new();
        event(seed, index, index * 10, &mut line);
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn the_proportions_are_one_person_three_auctions_and_46_bids_in_50() {
        let mut counts = [0; 3];
        for i in 0..50_000 {
            let v = parsed(1, i);
            let slot = match v["type"].as_str() {
                Some("person") => 0,
                Some("auction") => 1,
                Some("bid") => 2,
                other => panic!("type {other:?}"),
            };
            counts[slot] += 1;
        }
        assert_eq!(counts, [1000, 3000, 46_000]);
    }

    #[test]
    fn ids_count_up_and_bids_name_auctions_and_people_that_exist_or_soon_will() {
        let (mut people, mut auctions) = (0, 0);
        for i in 0..20_000 {
            let v = parsed(9, i);
            match v["type"].as_str() {
                Some("person") => {
                    assert_eq!(v["id"], FIRST_PERSON_ID + people);
                    people += 1;
                }
                Some("auction") => {
                    assert_eq!(v["id"], FIRST_AUCTION_ID + auctions);
                    auctions += 1;
                    let seller = v["seller"].as_u64().unwrap_or(0);
                    assert!(seller < FIRST_PERSON_ID + people + PERSON_ID_LEAD, "{v}");
                    assert!(v["reserve"].as_u64() >= v["initialBid"].as_u64());
                    assert!((10..15).contains(&v["category"].as_u64().unwrap_or(0)));
                }
                _ => {
                    let auction = v["auction"].as_u64().unwrap_or(0);
                    let bidder = v["bidder"].as_u64().unwrap_or(0);
                    assert!(auction >= FIRST_AUCTION_ID, "{v}");
                    assert!(
                        auction < FIRST_AUCTION_ID + auctions + AUCTION_ID_LEAD,
                        "{v}"
                    );
                    assert!(bidder >= FIRST_PERSON_ID, "{v}");
                    assert!(bidder < FIRST_PERSON_ID + people + PERSON_ID_LEAD, "{v}");
                    let price = v["price"].as_u64().unwrap_or(0);
                    assert!((100..=100_000_000).contains(&price), "{v}");
                }
            }
            assert_eq!(v["dateTime"], i * 10);
        }
    }

    #[test]
    fn half_the_bids_go_to_hot_auctions() {
        let bids: Vec<Json> = (0..50_000)
            .map(|i| parsed(3, i))
            .filter(|v| v["type"] == "bid")
            .collect();
        let hot = bids
            .iter()
            .filter(|v| {
                v["auction"]
                    .as_u64()
                    .is_some_and(|a| (a - FIRST_AUCTION_ID).is_multiple_of(HOT_ID_GROUP))
            })
            .count();
        let share = hot as f64 / bids.len() as f64;
        assert!((0.45..0.6).contains(&share), "hot share {share}");
    }

    #[test]
    fn an_event_depends_only_on_the_seed_and_its_index() {
        let line = |seed, i| {
            let mut s = String::new();
            event(seed, i, 5, &mut s);
            s
        };
        assert_eq!(line(4, 777), line(4, 777));
        assert_ne!(line(4, 777), line(5, 777));
    }
}
