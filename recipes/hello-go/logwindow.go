package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

const (
	redacted     = "[REDACTED]"
	maxFieldSize = 256 // bytes of one string field in a record
	maxPairs     = 16  // headers, query parameters, values per parameter
	// A value percent-encoded twice (or more) is still the value.
	maxDecodeRounds = 4
)

// Names containing one of these (case-insensitive) have their values redacted before a record is
// stored: Authorization, Cookie, X-Api-Key, ?token=, ?password=, ?client_secret=, ?sig=...
var sensitiveWords = []string{"auth", "token", "secret", "pass", "pwd", "key", "cookie", "session", "sig", "credential", "jwt", "otp"}

// logWindow keeps the last len(slots) records, each at most maxBytes long, in buffers allocated
// once at start: memory use is fixed whatever the request rate or size.
type logWindow struct {
	mu       sync.Mutex
	slots    [][]byte
	maxBytes int
	next     uint64 // sequence number of the next record
}

func newLogWindow(records, maxBytes int) *logWindow {
	slots := make([][]byte, records)
	for i := range slots {
		slots[i] = make([]byte, 0, maxBytes)
	}
	return &logWindow{slots: slots, maxBytes: maxBytes}
}

// add encodes under the lock so that sequence order and window order agree.
func (w *logWindow) add(encode func(seq uint64) []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	slot := &w.slots[w.next%uint64(len(w.slots))]
	*slot = append((*slot)[:0], encode(w.next)...)
	w.next++
}

// snapshot returns the window, oldest first, as JSON lines.
func (w *logWindow) snapshot() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	first := uint64(0)
	if w.next > uint64(len(w.slots)) {
		first = w.next - uint64(len(w.slots))
	}
	var out []byte
	for seq := first; seq < w.next; seq++ {
		out = append(out, w.slots[seq%uint64(len(w.slots))]...)
		out = append(out, '\n')
	}
	return out
}

type record struct {
	Seq          uint64              `json:"seq"`
	Time         string              `json:"time"`
	Remote       string              `json:"remote,omitempty"`
	Method       string              `json:"method,omitempty"`
	Path         string              `json:"path,omitempty"`
	Query        map[string][]string `json:"query,omitempty"`
	QueryInvalid bool                `json:"query_invalid,omitempty"`
	Headers      map[string]string   `json:"headers,omitempty"`
	Status       int                 `json:"status"`
	Bytes        int64               `json:"bytes"`
	DurationUS   int64               `json:"duration_us"`
	Truncated    bool                `json:"truncated,omitempty"`
}

// newRecord copies what is worth keeping from a request, redacted and clipped; the raw query
// string and sensitive values are never stored, and the debug token (matched by `token`, see
// tokenPattern) is scrubbed wherever it shows.
func newRecord(seq uint64, r *http.Request, status int, bytes int64, took time.Duration, token *regexp.Regexp) record {
	c := clipper{token: token}
	rec := record{
		Seq:        seq,
		Time:       time.Now().UTC().Format(time.RFC3339Nano),
		Remote:     c.clip(r.RemoteAddr),
		Method:     c.clip(r.Method),
		Path:       c.clip(r.URL.Path),
		Status:     status,
		Bytes:      bytes,
		DurationUS: took.Microseconds(),
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	rec.QueryInvalid = err != nil
	rec.Query = c.query(query)
	rec.Headers = c.headers(r.Header)
	rec.Truncated = c.truncated
	return rec
}

type clipper struct {
	token     *regexp.Regexp // nil: no token to scrub
	truncated bool
}

// tokenPattern matches the token in any letter case: header names reach the handler case-folded.
func tokenPattern(token string) *regexp.Regexp {
	if token == "" {
		return nil
	}
	return regexp.MustCompile("(?i)" + regexp.QuoteMeta(token))
}

// scrub removes the token from s, also where it hides percent-encoded: then the decoded text is
// kept, with the token redacted.
func (c *clipper) scrub(s string) string {
	if c.token == nil {
		return s
	}
	s = c.token.ReplaceAllLiteralString(s, redacted)
	if decoded := percentDecoded(s); c.token.MatchString(decoded) {
		return c.token.ReplaceAllLiteralString(decoded, redacted)
	}
	return s
}

func (c *clipper) clip(s string) string {
	s = c.scrub(s)
	if len(s) > maxFieldSize {
		s, c.truncated = cutUTF8(s, maxFieldSize), true
	}
	return s
}

func (c *clipper) query(values url.Values) map[string][]string {
	if len(values) == 0 {
		return nil
	}
	out := map[string][]string{}
	for _, name := range c.firstNames(values) {
		vals := values[name]
		if len(vals) > maxPairs {
			vals, c.truncated = vals[:maxPairs], true
		}
		kept := make([]string, len(vals))
		for i, v := range vals {
			kept[i] = c.value(name, v)
		}
		out[c.clip(name)] = kept
	}
	return out
}

func (c *clipper) headers(h http.Header) map[string]string {
	out := map[string]string{}
	for _, name := range c.firstNames(h) {
		out[c.clip(name)] = c.value(name, strings.Join(h[name], ", "))
	}
	return out
}

func (c *clipper) value(name, v string) string {
	if isSensitive(name) {
		return redacted
	}
	return c.clip(v)
}

// firstNames returns at most maxPairs keys, sorted, noting when some were left out.
func (c *clipper) firstNames(m map[string][]string) []string {
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	if len(names) > maxPairs {
		names, c.truncated = names[:maxPairs], true
	}
	return names
}

func isSensitive(name string) bool {
	lower := strings.ToLower(percentDecoded(name))
	for _, word := range sensitiveWords {
		if strings.Contains(lower, word) {
			return true
		}
	}
	return false
}

// encodeRecord returns the record as one JSON line of at most maxBytes, shedding its variable
// parts (headers, then the query, then long addresses) while it is too long; the last resort
// always fits in minRecordSize.
func encodeRecord(rec record, maxBytes int) []byte {
	sheds := []func(*record){
		func(r *record) { r.Headers = nil },
		func(r *record) { r.Query = nil },
		func(r *record) { r.Remote, r.Path = cutUTF8(r.Remote, 64), cutUTF8(r.Path, 64) },
		func(r *record) {
			*r = record{Seq: r.Seq, Time: r.Time, Status: r.Status, Bytes: r.Bytes, DurationUS: r.DurationUS}
		},
	}
	line, _ := json.Marshal(rec)
	for _, shed := range sheds {
		if len(line) <= maxBytes {
			break
		}
		shed(&rec)
		rec.Truncated = true
		line, _ = json.Marshal(rec)
	}
	return line
}

// cutUTF8 returns at most n bytes of s without splitting a character.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// percentDecoded decodes %XX sequences until none is left (at most maxDecodeRounds times),
// leaving malformed ones as they are, as Python's urllib.parse.unquote does.
func percentDecoded(s string) string {
	for i := 0; i < maxDecodeRounds; i++ {
		decoded := decodePercentOnce(s)
		if decoded == s {
			break
		}
		s = decoded
	}
	return s
}

func decodePercentOnce(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if hi, lo := unhex(s[i+1]), unhex(s[i+2]); hi >= 0 && lo >= 0 {
				out = append(out, byte(hi<<4|lo))
				i += 2
				continue
			}
		}
		out = append(out, s[i])
	}
	return string(out)
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
