package timelinesvg

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Element is one element of a parsed document, with its children.
type Element struct {
	Name     string
	Attrs    map[string]string
	Text     string // character data directly inside the element
	Children []*Element
}

// Parse reads an SVG document back with encoding/xml (strict), for tests and
// tools: it fails on anything that is not well-formed XML with one <svg>
// root element in the SVG namespace.
func Parse(doc string) (*Element, error) {
	d := xml.NewDecoder(strings.NewReader(doc))
	d.Strict = true
	var root *Element
	var stack []*Element
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("timelinesvg: not well-formed XML: %w", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			e := &Element{Name: tok.Name.Local, Attrs: map[string]string{}}
			for _, a := range tok.Attr {
				e.Attrs[a.Name.Local] = a.Value
			}
			if len(stack) == 0 {
				if root != nil {
					return nil, fmt.Errorf("timelinesvg: a second root element <%s>", e.Name)
				}
				if tok.Name.Local != "svg" || tok.Name.Space != "http://www.w3.org/2000/svg" {
					return nil, fmt.Errorf("timelinesvg: root element <%s> in namespace %q, want <svg> in the SVG namespace", tok.Name.Local, tok.Name.Space)
				}
				root = e
			} else {
				p := stack[len(stack)-1]
				p.Children = append(p.Children, e)
			}
			stack = append(stack, e)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 {
				stack[len(stack)-1].Text += string(tok)
			}
		}
	}
	if root == nil {
		return nil, errors.New("timelinesvg: no <svg> element")
	}
	return root, nil
}

// Find returns every element of the tree under e (e included) that match
// accepts, in document order.
func (e *Element) Find(match func(*Element) bool) []*Element {
	var out []*Element
	if match(e) {
		out = append(out, e)
	}
	for _, c := range e.Children {
		out = append(out, c.Find(match)...)
	}
	return out
}

// ByClass matches the elements of one class.
func ByClass(class string) func(*Element) bool {
	return func(e *Element) bool { return e.Attrs["class"] == class }
}

// ByName matches the elements of one name (rect, text, ...).
func ByName(name string) func(*Element) bool {
	return func(e *Element) bool { return e.Name == name }
}

// AllText is the character data of e and its descendants.
func (e *Element) AllText() string {
	s := e.Text
	for _, c := range e.Children {
		s += c.AllText()
	}
	return s
}
