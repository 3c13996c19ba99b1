package api_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	"github.com/pb33f/libopenapi/datamodel/high/base"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"

	"github.com/anivault/anivault/api"
	"github.com/anivault/anivault/events"
)

func model(t *testing.T) (libopenapi.Document, *v3.Document) {
	t.Helper()
	doc, err := libopenapi.NewDocument(api.OpenAPI())
	if err != nil {
		t.Fatalf("parse api/openapi.yaml: %v", err)
	}
	m, err := doc.BuildV3Model()
	if err != nil {
		t.Fatalf("build the model of api/openapi.yaml: %v", err)
	}
	return doc, &m.Model
}

// The document is OpenAPI 3.1 and valid against the 3.1 specification's
// schema; every reference resolves and every pattern compiles.
func TestDocumentIsValidOpenAPI31(t *testing.T) {
	doc, m := model(t)
	if info := doc.GetSpecInfo(); info.VersionNumeric != 3.1 || !strings.HasPrefix(info.Version, "3.1.") {
		t.Fatalf("openapi version %q, want 3.1.x", info.Version)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		for _, e := range verrs {
			t.Errorf("%s: %s", e.Message, e.Reason)
			for _, se := range e.SchemaValidationErrors {
				t.Errorf("  at %s: %s", se.FieldPath, se.Reason)
			}
		}
		t.FailNow()
	}
	idx := m.Index
	if idx == nil {
		t.Fatal("no index")
	}
	if bad := idx.GetReferenceIndexErrors(); len(bad) > 0 {
		t.Fatalf("unresolved references: %v", bad)
	}
	patterns := 0
	for name, sp := range m.Components.Schemas.FromOldest() {
		walkSchemas(sp.Schema(), name, map[*base.Schema]bool{}, func(path string, s *base.Schema) {
			if s.Pattern == "" {
				return
			}
			patterns++
			if _, err := regexp.Compile(s.Pattern); err != nil {
				t.Errorf("%s: pattern %q: %v", path, s.Pattern, err)
			}
		})
	}
	if patterns < 3 {
		t.Fatalf("found %d patterns; the walk is broken", patterns)
	}
	// Every route of CONTRACT.md's HTTP API is there with the methods it serves.
	for path, methods := range map[string][]string{
		"/v1/anime/{tmdb_id}": {"get", "put", "delete"},
		"/v1/status":          {"get"},
		"/healthz":            {"get"},
		"/readyz":             {"get"},
		"/metrics":            {"get"},
	} {
		pi := m.Paths.PathItems.GetOrZero(path)
		if pi == nil {
			t.Errorf("path %s is missing", path)
			continue
		}
		for _, method := range methods {
			if pi.GetOperations().GetOrZero(method) == nil {
				t.Errorf("%s %s is missing", method, path)
			}
		}
	}
}

// walkSchemas calls fn for s and every schema inside it (properties, items,
// allOf/anyOf/oneOf), each once.
func walkSchemas(s *base.Schema, path string, seen map[*base.Schema]bool, fn func(string, *base.Schema)) {
	if s == nil || seen[s] {
		return
	}
	seen[s] = true
	fn(path, s)
	if s.Properties != nil {
		for name, p := range s.Properties.FromOldest() {
			walkSchemas(p.Schema(), path+"."+name, seen, fn)
		}
	}
	if s.Items != nil && s.Items.IsA() {
		walkSchemas(s.Items.A.Schema(), path+"[]", seen, fn)
	}
	for _, group := range [][]*base.SchemaProxy{s.AllOf, s.AnyOf, s.OneOf} {
		for i, p := range group {
			walkSchemas(p.Schema(), fmt.Sprintf("%s/%d", path, i), seen, fn)
		}
	}
}

// jsonFields returns the JSON names of t's fields (embedded structs
// flattened) and whether each is always present (no omitempty).
func jsonFields(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for f := range t.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			for k, v := range jsonFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = !slices.Contains(strings.Split(opts, ","), "omitempty")
	}
	return out
}

// The document's schemas have exactly the fields of the Go types the node
// encodes, and require every field the node always sends: a field added to
// a payload fails here until the reference documents it.
func TestSchemasMatchTheGoTypes(t *testing.T) {
	_, m := model(t)
	for name, typ := range map[string]reflect.Type{
		"AnimeRecordInput": reflect.TypeFor[events.Record](),
		"NodeSystemStatus": reflect.TypeFor[events.SystemStatus](),
		"HealthStatistics": reflect.TypeFor[events.HealthStatistics](),
		"RetryStatistics":  reflect.TypeFor[events.RetryStatistics](),
		"CacheStatistics":  reflect.TypeFor[events.CacheStatistics](),
		"BufferStatus":     reflect.TypeFor[events.BufferStatus](),
		"ChangeLogStatus":  reflect.TypeFor[events.ChangeLogStatus](),
		"NodeStatus":       reflect.TypeFor[events.NodeStatus](),
	} {
		sp := m.Components.Schemas.GetOrZero(name)
		if sp == nil {
			t.Errorf("schema %s is missing", name)
			continue
		}
		s := sp.Schema()
		var props []string
		for p := range s.Properties.KeysFromOldest() {
			props = append(props, p)
		}
		fields := jsonFields(typ)
		var want []string
		for f := range fields {
			want = append(want, f)
		}
		sort.Strings(props)
		sort.Strings(want)
		if !slices.Equal(props, want) {
			t.Errorf("schema %s has properties %v; %s has %v", name, props, typ, want)
		}
		if s.AdditionalProperties == nil || !s.AdditionalProperties.IsB() || s.AdditionalProperties.B {
			t.Errorf("schema %s must say additionalProperties: false", name)
		}
		if name == "AnimeRecordInput" {
			continue // input: only tmdb_id and title are required
		}
		for f, always := range fields {
			if always && !slices.Contains(s.Required, f) {
				t.Errorf("schema %s: %s is always sent but not required", name, f)
			}
		}
	}
}

// recordCase is a PUT body, with whether the node (events.DecodeRecord) and
// the document accept it.
type recordCase struct {
	name     string
	body     string
	nodeOK   bool
	schemaOK bool // differs from nodeOK only for rules JSON Schema cannot express
}

func recordCases() []recordCase {
	long := strings.Repeat("가", 255)
	return []recordCase{
		{"minimal", `{"tmdb_id":1,"title":"x"}`, true, true},
		{"full", `{"tmdb_id":1429,"title":"Attack on Titan","original_title":"進撃の巨人","korean_title":"진격의 거인",
			"overview":"…","poster_path":"/p.jpg","backdrop_path":"/b.jpg","first_air_date":"2013-04-07",
			"last_air_date":"2023-11-05","status":"Ended","vote_average":8.7,"vote_count":6100,"popularity":151.2,
			"number_of_seasons":4,"number_of_episodes":94,"genres":["Animation"],"networks":["MBS"],
			"raw_data":{"any":{"nested":[1,2.5,"x",null,true]}}}`, true, true},
		{"nulls", `{"tmdb_id":1,"title":"x","original_title":null,"first_air_date":null,"vote_average":null,
			"vote_count":null,"genres":null,"raw_data":null,"version":null,"updated_at":null}`, true, true},
		{"version and updated_at are ignored", `{"tmdb_id":1,"title":"x","version":99,"updated_at":"2024-01-02T03:04:05Z"}`, true, true},
		{"title of 255 characters", `{"tmdb_id":1,"title":"` + long + `"}`, true, true},
		{"title with spaces around", `{"tmdb_id":1,"title":"  x  "}`, true, true},
		{"year 0001", `{"tmdb_id":1,"title":"x","first_air_date":"0001-01-01"}`, true, true},
		{"leap day", `{"tmdb_id":1,"title":"x","first_air_date":"2024-02-29"}`, true, true},
		{"largest small count", `{"tmdb_id":1,"title":"x","vote_count":2147483647}`, true, true},
		{"empty raw_data", `{"tmdb_id":1,"title":"x","raw_data":{}}`, true, true},

		{"no tmdb_id", `{"title":"x"}`, false, false},
		{"tmdb_id 0", `{"tmdb_id":0,"title":"x"}`, false, false},
		{"negative tmdb_id", `{"tmdb_id":-4,"title":"x"}`, false, false},
		{"tmdb_id as a string", `{"tmdb_id":"1","title":"x"}`, false, false},
		{"tmdb_id with a fraction", `{"tmdb_id":1.5,"title":"x"}`, false, false},
		{"no title", `{"tmdb_id":1}`, false, false},
		{"empty title", `{"tmdb_id":1,"title":""}`, false, false},
		{"blank title", `{"tmdb_id":1,"title":" \t\n"}`, false, false},
		{"title of no-break spaces", `{"tmdb_id":1,"title":"\u00a0\u3000"}`, false, false},
		{"title of 256 characters", `{"tmdb_id":1,"title":"` + long + `x"}`, false, false},
		{"title with NUL", `{"tmdb_id":1,"title":"a\u0000b"}`, false, false},
		{"null title", `{"tmdb_id":1,"title":null}`, false, false},
		{"overview with NUL", `{"tmdb_id":1,"title":"x","overview":"\u0000"}`, false, false},
		{"genre with NUL", `{"tmdb_id":1,"title":"x","genres":["a","\u0000"]}`, false, false},
		{"genre not a string", `{"tmdb_id":1,"title":"x","genres":[1]}`, false, false},
		{"date without zero padding", `{"tmdb_id":1,"title":"x","first_air_date":"2013-4-7"}`, false, false},
		{"date with time", `{"tmdb_id":1,"title":"x","first_air_date":"2013-04-07T00:00:00Z"}`, false, false},
		{"day 30 of February", `{"tmdb_id":1,"title":"x","last_air_date":"2023-02-30"}`, false, false},
		{"year 0000", `{"tmdb_id":1,"title":"x","first_air_date":"0000-01-01"}`, false, false},
		{"month 13", `{"tmdb_id":1,"title":"x","first_air_date":"2013-13-01"}`, false, false},
		{"negative vote_count", `{"tmdb_id":1,"title":"x","vote_count":-1}`, false, false},
		{"vote_count beyond int32", `{"tmdb_id":1,"title":"x","vote_count":2147483648}`, false, false},
		{"seasons as a string", `{"tmdb_id":1,"title":"x","number_of_seasons":"4"}`, false, false},
		{"vote_average as a string", `{"tmdb_id":1,"title":"x","vote_average":"8.7"}`, false, false},
		{"raw_data an array", `{"tmdb_id":1,"title":"x","raw_data":[1]}`, false, false},
		{"raw_data a string", `{"tmdb_id":1,"title":"x","raw_data":"{}"}`, false, false},
		{"unknown field", `{"tmdb_id":1,"title":"x","rating":5}`, false, false},
		{"field of another case", `{"tmdb_id":1,"TITLE":"x"}`, false, false},
		{"updated_at not a time", `{"tmdb_id":1,"title":"x","updated_at":"yesterday"}`, false, false},
		{"an array", `[{"tmdb_id":1,"title":"x"}]`, false, false},

		// What JSON Schema cannot say: the document describes these in words.
		{"duplicate key", `{"tmdb_id":1,"title":"x","title":"y"}`, false, true},
		{"integer written with a fraction", `{"tmdb_id":1,"title":"x","vote_count":4.0}`, false, true},
		{"raw_data with NUL", `{"tmdb_id":1,"title":"x","raw_data":{"a":"\u0000"}}`, false, true},
		{"raw_data with an unpaired surrogate", `{"tmdb_id":1,"title":"x","raw_data":{"a":"\ud800"}}`, false, true},
		{"raw_data with a 70-digit number", `{"tmdb_id":1,"title":"x","raw_data":{"a":` + strings.Repeat("9", 70) + `}}`, false, true},
	}
}

// The document's record schema accepts and refuses what the node does,
// except for the rules it says in words only.
func TestRecordSchemaAgreesWithTheNode(t *testing.T) {
	doc, _ := model(t)
	v, errs := validator.NewValidator(doc, config.WithFormatAssertions())
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	for _, c := range recordCases() {
		_, err := events.DecodeRecord([]byte(c.body))
		if got := err == nil; got != c.nodeOK {
			t.Errorf("%s: the node accepts it: %v, want %v (%v)", c.name, got, c.nodeOK, err)
		}
		req, err := http.NewRequest(http.MethodPut, "http://127.0.0.1:8080/v1/anime/1", bytes.NewReader([]byte(c.body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		ok, verrs := v.ValidateHttpRequestSync(req)
		if ok != c.schemaOK {
			var msgs []string
			for _, e := range verrs {
				msgs = append(msgs, e.Error())
			}
			t.Errorf("%s: the document accepts it: %v, want %v %v", c.name, ok, c.schemaOK, msgs)
		}
	}
}

// Response validation is live: answers that break the document fail it.
func TestResponseValidationCatchesDrift(t *testing.T) {
	doc, _ := model(t)
	v, errs := validator.NewValidator(doc, config.WithFormatAssertions())
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	record := `{"tmdb_id":1,"title":"x","version":193514046586881,"updated_at":"2026-01-02T03:04:05.123456789Z"}`
	recordHeaders := map[string]string{"X-AniVault-Mode": "normal", "X-AniVault-Source": "cache"}
	unavailable := map[string]string{"X-AniVault-Mode": "cache_only", "X-AniVault-Source": "replica", "Retry-After": "5"}
	for _, c := range []struct {
		name, method, path string
		code               int
		headers            map[string]string
		body               string
		ok                 bool
	}{
		{"a record", "GET", "/v1/anime/1", 200, recordHeaders, record, true},
		{"a record without version", "GET", "/v1/anime/1", 200, recordHeaders, `{"tmdb_id":1,"title":"x","updated_at":"2026-01-02T03:04:05Z"}`, false},
		{"a record with an unknown field", "GET", "/v1/anime/1", 200, recordHeaders, record[:len(record)-1] + `,"extra":1}`, false},
		{"a version beyond 2^53", "GET", "/v1/anime/1", 200, recordHeaders, `{"tmdb_id":1,"title":"x","version":9007199254740992,"updated_at":"2026-01-02T03:04:05Z"}`, false},
		{"a record without X-AniVault-Source", "GET", "/v1/anime/1", 200, map[string]string{"X-AniVault-Mode": "normal"}, record, false},
		{"an unknown mode", "GET", "/v1/anime/1", 200, map[string]string{"X-AniVault-Mode": "degraded", "X-AniVault-Source": "cache"}, record, false},
		{"an unknown source", "GET", "/v1/anime/1", 200, map[string]string{"X-AniVault-Mode": "normal", "X-AniVault-Source": "disk"}, record, false},
		{"503", "GET", "/v1/anime/1", 503, unavailable, `{"error":"service unavailable"}`, true},
		{"503 without Retry-After", "GET", "/v1/anime/1", 503, map[string]string{"X-AniVault-Mode": "cache_only", "X-AniVault-Source": "replica"}, `{"error":"service unavailable"}`, false},
		{"an undocumented status", "GET", "/v1/status", 418, nil, `{}`, false},
		{"committed", "PUT", "/v1/anime/1", 200, map[string]string{"X-AniVault-Mode": "normal"}, `{"status":"committed","version":5}`, true},
		{"buffered answered 200", "PUT", "/v1/anime/1", 200, map[string]string{"X-AniVault-Mode": "normal"}, `{"status":"buffered","version":5}`, false},
		{"400 without field", "PUT", "/v1/anime/1", 400, map[string]string{"X-AniVault-Mode": "normal"}, `{"error":"bad"}`, false},
		{"401 without WWW-Authenticate", "GET", "/v1/status", 401, nil, `{"error":"a valid bearer token is required","field":"Authorization"}`, false},
		{"readyz", "GET", "/readyz", 200, nil, `{"status":"ready","mode":"normal"}`, true},
		{"readyz without mode", "GET", "/readyz", 200, nil, `{"status":"ready"}`, false},
	} {
		req, err := http.NewRequest(c.method, "http://127.0.0.1:8080"+c.path, http.NoBody)
		if err != nil {
			t.Fatal(err)
		}
		resp := &http.Response{StatusCode: c.code, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(c.body)), Request: req}
		resp.Header.Set("Content-Type", "application/json")
		for k, val := range c.headers {
			resp.Header.Set(k, val)
		}
		if ok, verrs := v.ValidateHttpResponse(req, resp); ok != c.ok {
			t.Errorf("%s: valid %v, want %v %v", c.name, ok, c.ok, verrs)
		}
	}
}
